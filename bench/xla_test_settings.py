"""Which XLA:CPU settings the tests could compile under: compile time of the tests' tiny train
step, and whether the device-side views stay the same program, under JAX's "most optimisations
off" (what tests/conftest.py sets) or not, with XLA:CPU's fusion emitters or its older elemental
emitters (`--xla_cpu_use_fusion_emitters=false`).

    python bench/xla_test_settings.py --output bench/results/xla_test_settings_cpu.json

Each setting runs in a fresh process (the flags are read when the CPU backend starts), without a
compilation cache. The views: 4 batches of 256 examples with colour jitter (`DeviceViews`,
tests/test_device_augment.py's images), compared with the same views at full optimisation and
fusion emitters, XLA's default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import command_line, versions, write_json  # noqa: E402

SETTINGS = {
    "o0_fusion_emitters": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "XLA_FLAGS": ""},
    "o0_elemental_emitters": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
                              "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"},
    "full_fusion_emitters": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "0", "XLA_FLAGS": ""},
    "full_elemental_emitters": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "0",
                                "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"},
}
REFERENCE = "full_fusion_emitters"

_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, "tests")
from conftest_free import tiny_config, views
from amcl_jax import compile as compile_lib, forms
import jax
t = time.time()
compile_lib.compile_step(forms.resolve(tiny_config()),
                         compile_lib.Topology("cpu:1", jax.devices()[:1], None, 1))
seconds = time.time() - t
np.save(sys.argv[1], views())
print(json.dumps({"compile_step_seconds": round(seconds, 2)}))
"""

_HELPERS = r'''
"""Written by bench/xla_test_settings.py: the tests' tiny config and views without
tests/conftest.py (which sets the optimisation level itself)."""
import numpy as np


def tiny_config():
    """tests/conftest.py's tiny_config with AMCL: its sizes, set through the field names."""
    from amcl_jax.config import get_default_config, set_field
    config = get_default_config()
    sizes = {"data.image_size": 8, "model.width": 0.125, "projector.hidden_dim": 16,
             "projector.out_dim": 8, "amcl.temperature_hidden_dim": 8, "batch_size": 8}
    for field, value in {**sizes, "amcl.enabled": True}.items():
        set_field(config, field, value)
    return config


def views():
    import jax
    from jax.sharding import Mesh
    from amcl_jax.data.device_augment import DeviceViews
    rng = np.random.default_rng(0)
    low = rng.uniform(0.1, 0.9, (256, 4, 4, 3))
    images = np.repeat(np.repeat(low, 8, 1), 8, 2) + rng.normal(0, 0.05, (256, 32, 32, 3))
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    made = DeviceViews(images, np.zeros(256, np.int32), mesh=Mesh(np.asarray(jax.devices()[:1]),
                       ("data",)), global_batch_size=256, seed=0, augmentations="d",
                       image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)
    return np.concatenate([np.asarray(jax.device_get(made.batch(s))["views"]) for s in range(4)],
                          axis=1)
'''


def run_setting(name: str, env_extra: dict[str, str], scratch: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([ROOT, scratch]), **env_extra)
    out = subprocess.run([sys.executable, "-c", _CHILD, os.path.join(scratch, f"{name}.npy")],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench/results/xla_test_settings_cpu.json")
    args = parser.parse_args(argv)
    report = {"command": command_line(__file__, argv), "versions": versions(), "settings": {}}
    with tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(scratch, "conftest_free.py"), "w") as f:
            f.write(_HELPERS)
        for name, env_extra in SETTINGS.items():
            report["settings"][name] = {"env": env_extra, **run_setting(name, env_extra, scratch)}
            print(name, report["settings"][name], flush=True)
        reference = np.load(os.path.join(scratch, f"{REFERENCE}.npy"))
        for name in SETTINGS:
            views = np.load(os.path.join(scratch, f"{name}.npy"))
            differ = np.abs(views - reference).reshape(-1, *views.shape[-3:]).max((1, 2, 3))
            report["settings"][name].update(
                views_max_abs_difference=float(differ.max()),
                views_differing_over_1e_4=int((differ > 1e-4).sum()), views=int(differ.size))
    write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
