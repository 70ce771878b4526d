"""The training stream's example order in NumPy: the same indices as the tf.data pipeline.

`pipeline.example_index` maps stream position p to dataset example
``tf.random.experimental.index_shuffle(p % N, seed=stateless_fold_in([seed, 0], p // N), N - 1)``.
`example_indices` computes the same numbers without TensorFlow, so the views made on the
accelerator (`device_augment`) train on exactly the examples the host pipeline would give, step
for step (tested against TF):

- ``stateless_fold_in(s, e)`` is ``[x, e]`` with x the first int64 of
  ``stateless_random_uniform([], seed=s, dtype=int64)``: TF's Philox-4x32-10 keyed by the seed
  after its scrambling round (`_tf_seed_int64`);
- ``index_shuffle`` pads that seed to the key ``[498247692, x, e]`` (as uint32) and encrypts the
  index with a 4-round Simon cipher on the smallest even block of at least 16 bits that holds
  N - 1, re-encrypting until the result is <= N - 1 (cycle walking: a bijection on [0, N)).
"""

from __future__ import annotations

import functools
import math

import numpy as np

SHUFFLE_STREAM = 0  # as pipeline._SHUFFLE_STREAM: the seed stream of the per-epoch permutations

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_SEED_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)
_INDEX_SHUFFLE_PAD = 498247692  # tf.random.experimental.index_shuffle's first key word
_ROUNDS = 4


def _philox(counter: list[int], key: list[int]) -> list[int]:
    """One Philox-4x32-10 block (four uint32) of `counter` under `key` (Python ints)."""
    c, k = list(counter), list(key)
    for _ in range(10):
        p0, p1 = _PHILOX_M[0] * c[0], _PHILOX_M[1] * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & _MASK32, (p0 >> 32) ^ c[3] ^ k[1], p0 & _MASK32]
        k = [(k[0] + _PHILOX_W[0]) & _MASK32, (k[1] + _PHILOX_W[1]) & _MASK32]
    return c


def _tf_seed_int64(seed0: int, seed1: int) -> int:
    """The first value of TF's ``stateless_random_uniform([], seed=[seed0, seed1], int64)``,
    as an unsigned 64-bit int."""
    s0, s1 = seed0 & (2**64 - 1), seed1 & (2**64 - 1)
    mix = _philox([s0 & _MASK32, s0 >> 32, s1 & _MASK32, s1 >> 32], list(_SEED_SCRAMBLE_KEY))
    block = _philox([0, 0, mix[2], mix[3]], [mix[0], mix[1]])
    return (block[1] << 32) | block[0]


@functools.lru_cache(maxsize=64)
def epoch_key(seed: int, epoch: int) -> tuple[int, int, int]:
    """The three uint32 key words of epoch `epoch`'s permutation."""
    folded = _tf_seed_int64(seed, SHUFFLE_STREAM)
    return (_INDEX_SHUFFLE_PAD, folded & _MASK32, epoch & _MASK32)


def _simon_shuffle(index: np.ndarray, key: tuple[int, int, int], max_index: int) -> np.ndarray:
    """TF's `index_shuffle` of uint64 `index` (all <= max_index) under one key."""
    if max_index == 0:
        return np.zeros_like(index)
    block = math.ceil(math.log2(max_index))  # as TF, on the double log2
    block = max(block + block % 2, 16)
    word = block // 2
    mask = np.uint64((1 << word) - 1)
    w = np.uint64(word)

    def rotl(x, r):
        return ((x << np.uint64(r)) | (x >> (w - np.uint64(r)))) & mask

    def rotr(x, r):
        return ((x >> np.uint64(r)) | (x << (w - np.uint64(r)))) & mask

    def f(x):
        return (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

    round_keys = [np.uint64(k) & mask for k in key]
    # Simon's key schedule (one step for 4 rounds): c ^ (z & 1) ^ k0 ^ ROTR(k2, 3) ^ ROTR(k2, 4)
    round_keys.append((np.uint64(0xFFFFFFFC) & mask) ^ np.uint64(1) ^ round_keys[0]
                      ^ rotr(round_keys[2], 3) ^ rotr(round_keys[2], 4))
    value = index.astype(np.uint64)
    pending = np.ones(value.shape, bool)
    while pending.any():
        v = value[pending]
        left, right = (v >> w) & mask, v & mask
        for i in range(0, _ROUNDS, 2):
            left = left ^ f(right) ^ round_keys[i]
            right = right ^ f(left) ^ round_keys[i + 1]
        value[pending] = (left << w) | right
        pending = value > np.uint64(max_index)
    return value


def example_indices(positions: np.ndarray, *, seed: int, num_examples: int) -> np.ndarray:
    """Dataset index (int64) of each stream position (int, >= 0): `pipeline.example_index`."""
    positions = np.asarray(positions, np.int64)
    if num_examples < 1 or num_examples > 2**62:
        raise ValueError(f"num_examples={num_examples} must be in [1, 2**62]")
    epochs, offsets = positions // num_examples, positions % num_examples
    out = np.empty(positions.shape, np.int64)
    for epoch in np.unique(epochs):
        rows = epochs == epoch
        out[rows] = _simon_shuffle(offsets[rows].astype(np.uint64),
                                   epoch_key(int(seed), int(epoch)), num_examples - 1)
    return out
