"""The examples in examples/ run (a few steps, in-process)."""

import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_training_loop_trains_with_the_amcl_loss(capsys):
    losses = _load("own_training_loop").main(steps=6)
    assert len(losses) == 6 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # The loss is being minimised.
    out = capsys.readouterr().out
    assert "AMCL loss" in out and "NT-Xent" in out
