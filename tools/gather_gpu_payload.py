"""Gathers what `tools/gpu_check.py` needs and the GPU machine lacks into payload/ (git-ignored).

    python tools/gather_gpu_payload.py   # --data ../shared/data/cifar10-jpeg.tar.gz --out payload

The GPU machine (docs/gpu.md) has Python 3.12 with JAX (CUDA), flax, optax, orbax-checkpoint,
chex, PyTorch, torchvision, Pillow, scikit-learn, matplotlib and tensorboard, but not
TensorFlow, TFDS, clu, ml_collections or dm-pix, and no network. The training path without
TensorFlow needs only the last two, both pure Python: their wheels (`PAYLOAD_PACKAGES`, at the
versions pinned in requirements.txt) are downloaded with `pip download --no-deps`, and the
CIFAR-10 JPEG archive is copied beside them. Then it

- checks that nothing else is missing: it imports the GPU check's modules in a subprocess with
  TensorFlow, TFDS and clu blocked (as `tests/_without_tensorflow.py` does) and lists every
  installed distribution they loaded that is neither in the payload nor one of the GPU
  machine's packages or their dependencies (exit status 1 if any);
- prints each file's size and the total, which must stay under `--limit_mib` (64 MiB: what
  travels with one command; exit status 1 if over);
- prints the one command to run on the GPU machine from the repository root (the payload
  folder travels with it as an ignored path): the wheels installed with pip, or, where pip may
  not install them, imported from the wheel files on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD_PACKAGES = ("ml_collections", "dm-pix")
# Installed there (docs/gpu.md); their dependencies are taken as installed too.
ON_GPU_MACHINE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "torch",
                  "torchvision", "pillow", "scikit-learn", "matplotlib", "tensorboard", "numpy")
# Imported when installed, not needed: distribution -> who imports it.
OPTIONAL_IMPORTS = {
    "flatbuffers": "jax (jax._src.export, in a try: block)",
    "tqdm": "torch.hub (torchvision.models; a progress bar, in a try: block)",
    "libtpu": "amcl_jax.platform.backends (only looked up, to keep an absent TPU quiet)",
}
DEFAULT_DATA = os.path.join("..", "shared", "data", "cifar10-jpeg.tar.gz")
# The modules the GPU check imports, loaded with TensorFlow, TFDS and clu blocked.
IMPORT_CHECK = """
import json, os, sys
for name in ("tensorflow", "tensorflow_datasets", "clu"):
    sys.modules[name] = None
sys.path.insert(0, {root!r})
import PIL.Image
import tools.gpu_check, bench.run, bench.loop, bench.jax_step, bench.flops
import amcl_jax.train, amcl_jax.evaluate.knn_eval, amcl_jax.data.device_augment
print(json.dumps(sorted({{os.path.realpath(module.__file__) for module in sys.modules.values()
                          if getattr(module, "__file__", None)}})))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(package: str, requirements: str = os.path.join(ROOT, "requirements.txt")) -> str:
    """`package==version` as requirements.txt pins it (`package` alone if it does not)."""
    with open(requirements) as f:
        for line in f:
            spec = line.split("#")[0].strip()
            if _canonical(re.split(r"[=<>!~ ]", spec)[0]) == _canonical(package):
                return spec
    return package


def dependency_closure(names) -> set[str]:
    """Canonical names of `names` and of everything they require (as installed here; extras'
    requirements left out)."""
    seen, todo = set(), [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(_canonical(re.split(r"[\s;<>=!~\[(]", requirement.strip())[0]))
    return seen


def _owners() -> dict[str, str]:
    """Real path of every installed file -> the canonical name of its distribution."""
    owners = {}
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"] or "")
        for file in dist.files or []:
            owners[os.path.realpath(dist.locate_file(file))] = name
    return owners


def imported_distributions() -> set[str]:
    """Canonical names of the installed distributions whose files the GPU check's modules load
    with TensorFlow, TFDS and clu blocked (in a subprocess)."""
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK.format(root=ROOT)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if result.returncode != 0:
        raise RuntimeError(f"importing the GPU check's modules without TensorFlow failed:\n"
                           f"{result.stderr[-3000:]}")
    files = json.loads(result.stdout.strip().splitlines()[-1])
    owners = _owners()
    return {owners[path] for path in files if path in owners}


def missing_on_gpu_machine(needed: set[str], payload=PAYLOAD_PACKAGES) -> list[str]:
    """Those of `needed` that neither the GPU machine's packages (and their dependencies) nor
    the `payload` wheels provide, `OPTIONAL_IMPORTS` and the project itself left out."""
    there = (dependency_closure(ON_GPU_MACHINE) | dependency_closure(payload)
             | {_canonical(name) for name in OPTIONAL_IMPORTS} | {"amcl-jax"})
    return sorted(needed - there)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="the CIFAR-10 JPEG archive to carry (relative to the repo root)")
    parser.add_argument("--out", default="payload", help="the payload folder (git-ignored)")
    parser.add_argument("--limit_mib", type=float, default=64.0)
    parser.add_argument("--no_download", action="store_true",
                        help="keep the wheels already in --out (no pip download)")
    parser.add_argument("--no_import_check", action="store_true")
    args = parser.parse_args(argv)
    out = os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out
    data = os.path.join(ROOT, args.data) if not os.path.isabs(args.data) else args.data
    os.makedirs(out, exist_ok=True)
    if not args.no_download:
        specs = [pinned(p) for p in PAYLOAD_PACKAGES]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--only-binary=:all:", "--dest", out, *specs], check=True)
    shutil.copyfile(data, os.path.join(out, os.path.basename(data)))

    status = 0
    if not args.no_import_check:
        missing = missing_on_gpu_machine(imported_distributions())
        if missing:
            status = 1
            print(f"MISSING on the GPU machine and not in the payload: {', '.join(missing)}")
        else:
            print("import check: the GPU check needs nothing beyond the GPU machine's packages "
                  "and the payload's wheels (TensorFlow, TFDS and clu blocked)")
    files = sorted(glob.glob(os.path.join(out, "*")))
    total = 0
    for path in files:
        size = os.path.getsize(path)
        total += size
        print(f"{size / 2**20:9.2f} MiB  {os.path.relpath(path, ROOT)}")
    print(f"{total / 2**20:9.2f} MiB  total (limit {args.limit_mib:g} MiB)")
    if total > args.limit_mib * 2**20:
        status = 1
        print(f"OVER THE LIMIT: {total / 2**20:.2f} MiB > {args.limit_mib:g} MiB")
    inside = os.path.commonpath([out, ROOT]) == ROOT
    rel = os.path.relpath(out, ROOT) if inside else out  # As typed from the repository root.
    archive = os.path.join(rel, os.path.basename(data))
    # Where pip may not install (a system Python marked externally managed), the pure-Python
    # wheels are imported from the zip files themselves.
    print("On the GPU machine, from the repository root (with the payload folder carried):")
    print(f"python -m pip install --no-index --no-deps {rel}/*.whl || export PYTHONPATH="
          f"$(ls {rel}/*.whl | tr '\\n' ':')$PYTHONPATH; "
          f"python tools/gpu_check.py --out $OUT --data_dir {archive}")
    return status


if __name__ == "__main__":
    sys.exit(main())
