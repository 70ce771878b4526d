"""Every method variant (method x AMCL on/off) end to end: 3 steps on mock CIFAR-10, the loss
decreasing, the momentum networks and the MoCo queue in the checkpoint."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from conftest import tiny_config

from amcl_jax import methods, models, train

VARIANTS = [(method.name, amcl) for method in methods.registered()
            for amcl in ((False, True) if method.supports_amcl else (False,))]


class TinyEncoder(nn.Module):
    """Conv - BatchNorm - ReLU - mean pool: (B, H, W, 3) -> (B, 16). Compiles in a blink, and has
    BatchNorm statistics for the momentum networks to carry. (Backbones: tests/models/.)"""

    width: float = 1.0
    stem: str = "cifar"
    dtype: object = jnp.float32
    conv: object = None

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(16, (3, 3), strides=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return jnp.mean(x, axis=(1, 2))


@pytest.fixture
def tiny_encoder(monkeypatch):
    monkeypatch.setitem(models.ENCODERS, "test_tiny", (TinyEncoder, lambda width: 16))


def _e2e_config(method, amcl):
    # Identical views (no augmentation) so that 3 steps' loss trend is not drowned by
    # augmentation noise; Barlow Twins gets crops, as identical views start it at C_ll = 1.
    # MoCo: a queue of exactly one step's 2N = 16 keys (it wraps around every step) and a faster
    # momentum, so its keys keep up with the queries within 3 steps.
    config = tiny_config(**{
        "model.name": "test_tiny", "method": method, "amcl.enabled": amcl,
        "total_steps": 3, "log_every_steps": 1, "eval.every_steps": 3,
        "checkpoint.every_steps": 3, "data.augmentations": "a" if method == "barlow_twins" else "",
        "data.allow_no_augmentation": True,
        "moco.queue_size": 16, "moco.momentum": 0.9, "predictor.hidden_dim": 8,
        "amcl.temperature_bounds": (0.5, 2.0),
    })
    if method == "barlow_twins":
        config.projector.num_layers = 3
    if method == "vicreg":  # Weights 25 / 25 / 1: at SGD's 0.05 its output scale overshoots and
        config.optimizer.learning_rate = 0.01  # the covariance term grows by the third step.
    return config


@pytest.mark.parametrize("method,amcl", VARIANTS)
def test_every_variant_trains_end_to_end(tmp_path, tiny_encoder, method, amcl):
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=24):
        summary = train.train_and_evaluate(_e2e_config(method, amcl), workdir)
    assert summary["method"] == method and summary["amcl"] is amcl and summary["steps"] == 3
    on_disk = json.load(open(os.path.join(workdir, "summary.json")))
    assert on_disk["method"] == method and on_disk["amcl"] is amcl
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        loss = [json.loads(line)["loss"] for line in f]
    assert len(loss) == 3 and np.all(np.isfinite(loss))
    # Decreasing over the steps. MoCo's first step is against the random initial queue (an easy,
    # lower loss), so its trend starts at step 2, once the queue holds real keys.
    first = 1 if method == "moco" else 0
    assert loss[-1] < loss[first], loss

    if method in ("moco", "byol"):
        # The momentum network (and the queue) are in the checkpoint, and moved as they should.
        state = ocp.StandardCheckpointer().restore(
            os.path.join(workdir, "checkpoints", "3", "state"))
        extra, params = state["extra"], state["params"]
        assert set(extra) >= {"target_params", "target_batch_stats"}
        assert jax.tree.structure(extra["target_batch_stats"]) == jax.tree.structure(
            {k: v for k, v in state["batch_stats"].items() if k in ("encoder", "projector")})
        online = jax.tree.leaves(params["projector"])
        target = jax.tree.leaves(extra["target_params"]["projector"])
        assert any(not np.allclose(o, t) for o, t in zip(online, target, strict=True))
        if method == "moco":
            # 3 steps x 2N = 16 keys into a queue of 16: full, and the pointer back at 0.
            assert extra["queue"].shape == (3 if amcl else 1, 16, 8)
            assert int(extra["queue_ptr"]) == 0
