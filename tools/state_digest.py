"""Behaviour fingerprint for refactoring: every CIFAR-10 recipe (both AMCL forms where AMCL is
on) trained 10 steps at a tiny size on digits, with the SHA-256 of the final parameters.

    python tools/state_digest.py --out /tmp/before.json
    ... change the code ...
    python tools/state_digest.py --out /tmp/after.json --compare /tmp/before.json

A reshaping that does not change behaviour leaves every digest equal (same machine, same jax).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "data.dataset": "digits", "data.data_dir": "", "data.image_size": 8, "data.load_size": 8,
    "data.max_train_examples": -1, "model.width": 0.125, "model.stem": "cifar",
    "batch_size": 8, "projector.hidden_dim": 16, "projector.out_dim": 8,
    "amcl.temperature_hidden_dim": 8, "amcl.topk": 5, "predictor.hidden_dim": 16,
    "moco.queue_size": 32, "total_steps": 10, "log_every_steps": 5, "eval.every_steps": 1000,
    "eval.max_bank_examples": 64, "eval.max_query_examples": 32, "eval.knn_k": 5,
    "eval.batch_size": 32, "checkpoint.every_steps": 1000, "online_probe.enabled": False,
}


def _set(config, field, value):
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value


def cases():
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "cifar10_*.py"))):
        name = os.path.basename(path)[:-3]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        for key, value in TINY.items():
            _set(config, key, value)
        if config.method == "barlow_twins":
            config.projector.out_dim = 16
        forms = ("project", "authors") if config.amcl.enabled else ("",)
        for form in forms:
            case = config.copy_and_resolve_references()
            if form:
                case.amcl.form = form
            yield f"{name}:{form}" if form else name, case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default="")
    parser.add_argument("--only", default="", help="comma-separated case names")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from absl import logging

    from amcl_jax.train import train_and_evaluate

    logging.set_verbosity(logging.ERROR)
    only = set(filter(None, args.only.split(",")))
    digests = {}
    for name, config in cases():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as workdir:
            summary = train_and_evaluate(config, workdir)
        digests[name] = summary["params_sha256"]
        print(name, digests[name], flush=True)
    with open(args.out, "w") as f:
        json.dump(digests, f, indent=2)
    if args.compare:
        before = json.load(open(args.compare))
        changed = [k for k in digests if k in before and before[k] != digests[k]]
        added = [k for k in digests if k not in before]  # A recipe added since: nothing to compare.
        print("all equal" if not changed else f"CHANGED: {changed}",
              f"(new, not compared: {added})" if added else "")
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
