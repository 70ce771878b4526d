"""The paper's configurations compiled for TPU slices from any machine: docs/scaling.md's table.

    python bench/scaling_table.py --out bench/results/scaling            # every row (~1 h, 2 cores)
    python bench/scaling_table.py --out bench/results/scaling --rows cifar10_r18_v5e_1

Each row is one `python -m amcl_jax.compile --config=... --topology=...` (its own process: a
`cpu:N` topology fixes the device count at start-up); its `compile.json` lands in
`OUT/<row>/compile.json` (the HLO stays in a scratch folder: tens of MB per row), and the table is
written to `OUT/table.md` from every row found there. A row that does not fit is recorded with
the compile command's one-line reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EPOCHS = 800  # The paper's CIFAR-10 schedule; ImageNet rows are projected at the same length.

CIFAR = ("configs/cifar10_amcl_simclr.py", {"batch_size": 512, "model.dtype": "bfloat16"})
IMAGENET_R50 = ("configs/imagenet_amcl_simclr.py", {"batch_size": 4096,
                                                     "model.dtype": "bfloat16"})
VIT = lambda size, **extra: ("configs/imagenet_amcl_simclr.py", {
    "batch_size": 4096, "model.dtype": "bfloat16", "model.name": f"vit_{size}", **extra})

# name -> (what, (config, overrides), topology)
ROWS: dict[str, tuple[str, tuple[str, dict], str]] = {
    "cifar10_r18_v5e_1": ("CIFAR-10 ResNet-18, 512 per view", CIFAR, "v5e:1x1"),
    "cifar10_r18_v5e_8": ("CIFAR-10 ResNet-18, 512 per view", CIFAR, "v5e:2x4"),
    "cifar10_r18_v4_8": ("CIFAR-10 ResNet-18, 512 per view", CIFAR, "v4:2x2x1"),
    "imagenet_r50_v5e_16": ("ImageNet ResNet-50, 4096 per view", IMAGENET_R50, "v5e:4x4"),
    "imagenet_r50_v5e_16_remat": (
        "ImageNet ResNet-50, 4096 per view, remat",
        (IMAGENET_R50[0], {**IMAGENET_R50[1], "model.remat": True}), "v5e:4x4"),
    "imagenet_r50_f32_v5e_4": (
        "ImageNet ResNet-50, 4096 per view, float32",
        (IMAGENET_R50[0], {**IMAGENET_R50[1], "model.dtype": "float32"}), "v5e:2x2"),
    "imagenet_r50_v5e_256": ("ImageNet ResNet-50, 4096 per view", IMAGENET_R50, "v5e:16x16"),
    "imagenet_r50_v4_32": ("ImageNet ResNet-50, 4096 per view", IMAGENET_R50, "v4:2x4x4"),
    "imagenet_r50_v5p_64": ("ImageNet ResNet-50, 4096 per view", IMAGENET_R50, "v5p:4x4x4"),
    "imagenet_vitb_v5p_64": ("ImageNet ViT-B/16, 4096 per view", VIT("b"), "v5p:4x4x4"),
    "imagenet_vitl_v5e_256": ("ImageNet ViT-L/16, 4096 per view, remat + sharded params",
                              VIT("l", **{"model.remat": True, "model.shard_params": True}),
                              "v5e:16x16"),
}


def command(config: str, overrides: dict, topology: str, out: str) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "amcl_jax.compile", f"--config={config}", *flags,
            f"--topology={topology}", f"--out={out}"]


def run_row(name: str, out_root: str, timeout: int) -> dict:
    what, (config, overrides), topology = ROWS[name]
    scratch = tempfile.mkdtemp(prefix=f"compile_{name}_")
    cmd = command(config, overrides, topology, scratch)
    print(" ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    print(result.stdout.strip(), flush=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    path = os.path.join(scratch, "compile.json")
    record = json.load(open(path)) if os.path.exists(path) else {"topology": topology}
    record.update(row=name, what=what, command="python " + " ".join(cmd[1:-1]),
                  returncode=result.returncode, error=lines[-1][7:] if lines else None)
    os.makedirs(os.path.join(out_root, name), exist_ok=True)
    with open(os.path.join(out_root, name, "compile.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def _gib(num: float | None) -> str:
    return "" if num is None else f"{num / 1024**3:.2f}"


def table(records: list[dict]) -> str:
    lines = [
        "| configuration | topology | devices | per device per view | peak GiB / HBM GiB | "
        "TFLOP per device per step | collective MB per step | roofline step ms | "
        f"projected h for {EPOCHS} epochs | fits |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "per_device" not in r:
            lines.append(f"| {r['what']} | {r['topology']} | | | | | | | | no: {r['error']} |")
            continue
        per_device = r["per_device"]
        collective_mb = sum(v["bytes"] for v in r["collectives"].values()) / 1e6
        hours = (r["projected_seconds_per_epoch"] * EPOCHS / 3600
                 if r.get("projected_seconds_per_epoch") else None)
        fits = {True: "yes", False: f"no: {r.get('error') or 'over HBM'}", None: ""}[
            per_device["fits"]]
        roofline = r["roofline_step_seconds"]
        lines.append(
            f"| {r['what']} | {r['topology']} | {r['devices']} | "
            f"{r['batch_per_device_per_view']} | {_gib(per_device['memory']['peak'])} / "
            f"{_gib(per_device['hbm_bytes'])} | {per_device['flops'] / 1e12:.3f} | "
            f"{collective_mb:.1f} | {'' if roofline is None else f'{roofline * 1e3:.1f}'} | "
            f"{'' if hours is None else f'{hours:.2f}'} | {fits} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", default="", help="comma-separated row names; default: all")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per row")
    args = parser.parse_args()
    names = [n for n in args.rows.split(",") if n] or list(ROWS)
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {unknown}; allowed: {sorted(ROWS)}")
    for name in names:
        run_row(name, args.out, args.timeout)
    records = []
    for name in ROWS:
        path = os.path.join(args.out, name, "compile.json")
        if os.path.exists(path):
            records.append(json.load(open(path)))
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table(records))
    print(table(records))


if __name__ == "__main__":
    main()
