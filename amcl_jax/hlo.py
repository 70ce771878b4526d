"""Readers of an optimised HLO text (`python -m amcl_jax.compile` writes one per step): the
step's collectives with their bytes, how often loop bodies run, collectives that move images or
feature maps, and the batch size the encoder's convolutions see."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def _shape_bytes(text: str) -> int:
    """Bytes of an HLO result type: `f32[2,64]{1,0}` or a tuple `(f32[8], bf16[4,4])`."""
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_WHILE = re.compile(r" while\(.*condition=%([^,\s]+), body=%([^,\s]+)")
_TRIP_BOUND = re.compile(r"s32\[\]\S* constant\((\d+)\)")


def _lines_by_computation(hlo: str) -> Iterator[tuple[str | None, str]]:
    """(name of the enclosing computation, line) for every instruction line of an HLO text
    (None before the first computation header); the headers themselves are not yielded."""
    current = None
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            continue
        yield current, line


def _loop_multipliers(hlo: str) -> dict[str, int]:
    """{computation: how often one step runs it} for while bodies with a constant trip count
    (a scanned stack of layers: ViT's `nn.scan`), nested loops multiplied; others run once."""
    bodies, bounds = {}, {}
    for current, line in _lines_by_computation(hlo):
        loop = _WHILE.search(line)
        if loop:
            bodies[loop.group(2)] = (loop.group(1), current)
        bound = _TRIP_BOUND.search(line)
        if bound and current is not None:
            bounds.setdefault(current, []).append(int(bound.group(1)))

    def times(name: str, seen=()) -> int:
        if name not in bodies or name in seen:
            return 1
        condition, parent = bodies[name]
        trips = max(bounds.get(condition, [1]))  # `i < N` with i from 0: N iterations.
        return trips * times(parent, (*seen, name))

    return {name: times(name) for name in bodies}


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """{kind: {"count", "bytes"}} over one step's collectives (async pairs counted once; an op
    inside a loop body counted once per iteration)."""
    found = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    pattern = re.compile(r"= (\(.*?\)|\S+) (" + "|".join(COLLECTIVES) + r")(-start)?\(")
    multipliers = _loop_multipliers(hlo)
    for current, line in _lines_by_computation(hlo):
        match = pattern.search(line)
        if match:
            times = multipliers.get(current, 1)
            kind = found[match.group(2)]
            kind["count"] += times
            result = match.group(1)
            if match.group(3) and result.startswith("("):  # start ops return (operand, result).
                parts = re.findall(r"\w+\[[\d,]*\]", result)
                result = parts[-1] if parts else result
            kind["bytes"] += times * _shape_bytes(result)
    return found


MOVING_COLLECTIVES = ("all-gather", "all-to-all", "collective-permute")
_FORWARD_CONV = re.compile(
    r"= \w+\[(\d+),(\d+),(\d+),(\d+)\]\S* convolution\(.*dim_labels=b01f_01io->b01f")


def _forward_convolutions(hlo: str) -> list[tuple[int, int, int, int]]:
    """Output shapes (B, h, w, C) of the encoder's forward convolutions: those in the layout the
    model writes (NHWC images, HWIO kernels), not their transposes (gradients) nor the small
    convolutions XLA re-lays out with batch and features swapped."""
    return [tuple(int(d) for d in match.groups()) for line in hlo.splitlines()
            if " convolution(" in line and "transpose" not in line
            and (match := _FORWARD_CONV.search(line))]


def activation_collectives(hlo: str, image_size: int | None = None) -> list[str]:
    """Collectives that move (not reduce) images (..., S, S, 3) or the encoder's feature maps
    (..., h, w, C as its forward convolutions produce them) between devices."""
    shapes = {shape[1:] for shape in _forward_convolutions(hlo)}
    if image_size:
        shapes.add((image_size, image_size, 3))
    pattern = re.compile(r"= (\(.*?\)|\S+) (" + "|".join(MOVING_COLLECTIVES) + r")(-start)?\(")
    out = []
    for line in hlo.splitlines():
        match = pattern.search(line)
        if match and any(tuple(int(d) for d in dims.split(",")[-3:]) in shapes
                         for _, dims in re.findall(r"(\w+)\[([\d,]+)\]", match.group(1))
                         if len(dims.split(",")) >= 3):
            out.append(f"{match.group(2)} {match.group(1)}")
    return out


def encoder_batch_sizes(hlo: str) -> list[int]:
    """Batch sizes of the encoder's forward convolutions (`_forward_convolutions`)."""
    return sorted({shape[0] for shape in _forward_convolutions(hlo)})
