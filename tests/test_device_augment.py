"""Views made on the accelerator (`data.augment_on="device"`) against the tf.data pipeline.

The two paths draw their random numbers from different generators, so they are compared by
distribution: every op's output statistics over thousands of views, by two-sample tests (fixed
seeds, so each test is deterministic). The examples themselves are the same, index for index.
"""

import json
import subprocess
import sys

import _runs
import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from scipy import stats

from amcl_jax.config import ConfigError, get_default_config, validate_config
from amcl_jax.data import device_augment, pipeline, shuffle
from amcl_jax.data.device_augment import DeviceViews

SIZE = 32
P_MIN = 1e-3  # two-sample tests: the same distribution unless p < P_MIN


def _mesh(devices=None):
    return Mesh(np.asarray(devices or jax.devices()[:1]), ("data",))


def _views(images, letters, *, steps, batch, device, seed=0, image_size=SIZE):
    """(views (steps * batch * 2, S, S, 3) in [0, 1], indices) from either path."""
    common = dict(global_batch_size=batch, seed=seed, augmentations=letters,
                  image_size=image_size, mean=(0.0,) * 3, std=(1.0,) * 3)
    labels = np.zeros(len(images), np.int32)
    if device:
        made = DeviceViews(images, labels, mesh=_mesh(), **common)
        batches = [jax.device_get(made.batch(step)) for step in range(steps)]
    else:
        iterator = pipeline.train_iterator(images, labels, start_step=0, **common)
        batches = [next(iterator) for _ in range(steps)]
    # (V, B, ...) -> example-major rows: example i's views are rows 2i and 2i + 1.
    views = np.concatenate([np.swapaxes(b["views"], 0, 1).reshape(-1, *b["views"].shape[2:])
                            for b in batches])
    return views, np.concatenate([b["index"] for b in batches])


@pytest.mark.parametrize("seed,num_examples", [(0, 10), (0, 1797), (5, 50_000), (7, 70_001),
                                               (1, 1), (11, 65_537)])
def test_example_indices_are_tf_index_shuffle(seed, num_examples):
    positions = np.arange(0, 3 * num_examples, max(1, num_examples // 61))
    want = [int(pipeline.example_index(p, seed=seed, num_examples=num_examples))
            for p in positions]
    got = shuffle.example_indices(positions, seed=seed, num_examples=num_examples)
    np.testing.assert_array_equal(got, want)


def test_device_batches_hold_the_host_pipelines_examples():
    images = np.random.default_rng(0).integers(0, 256, (37, 8, 8, 3), np.uint8)
    _, host = _views(images, "", steps=5, batch=16, device=False, seed=3, image_size=8)
    _, device = _views(images, "", steps=5, batch=16, device=True, seed=3, image_size=8)
    np.testing.assert_array_equal(device, host)  # across two epoch boundaries (80 > 2 * 37)


def _coordinate_image():
    """Channel 0 = 8 * column, channel 1 = 8 * row: a crop's box can be read off its view."""
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    return np.stack([8 * cols, 8 * rows, np.zeros_like(rows)], -1).astype(np.uint8)


def _smooth_colour_images(count, seed=0):
    """Colourful, mostly smooth images (blur and jitter both visible on them)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0.1, 0.9, (count, 4, 4, 3))
    images = np.repeat(np.repeat(low, SIZE // 4, 1), SIZE // 4, 2)
    images += rng.normal(0, 0.05, images.shape)
    return np.clip(np.round(images * 255), 0, 255).astype(np.uint8)


def _crop_statistics(views):
    """(area fraction, aspect ratio w / h) of each view's crop box, from two interior samples."""
    quarter, three_quarters = SIZE // 4, 3 * SIZE // 4
    scale = 255.0 / 8.0 * SIZE / (three_quarters - quarter)
    width = (views[:, 0, three_quarters, 0] - views[:, 0, quarter, 0]) * scale
    height = (views[:, three_quarters, 0, 1] - views[:, quarter, 0, 1]) * scale
    return width * height / SIZE**2, width / height


def _assert_same_distribution(host, device, what):
    result = stats.ks_2samp(host, device)
    assert result.pvalue > P_MIN, (what, result, np.mean(host), np.mean(device))


def test_random_resized_crop_area_and_aspect_ratio():
    images = np.repeat(_coordinate_image()[None], 64, 0)
    host, _ = _views(images, "a", steps=8, batch=256, device=False)
    device, _ = _views(images, "a", steps=8, batch=256, device=True)
    for name, h, d in zip(("area", "aspect ratio"), _crop_statistics(host),
                          _crop_statistics(device), strict=True):
        _assert_same_distribution(h, d, name)
    area, ratio = _crop_statistics(device)
    assert 0.06 < area.min() and area.max() <= 1.01 and area.mean() > 0.4
    assert 0.65 < ratio.min() and ratio.max() < 1.55  # 3/4 to 4/3, and integer crop sides


def _colour_statistics(views):
    chroma = views.max(-1) - views.min(-1)
    return {"mean": views.mean((1, 2, 3)), "contrast": views.std((1, 2, 3)),
            "saturation": chroma.mean((1, 2)),
            "red - blue": (views[..., 0] - views[..., 2]).mean((1, 2))}


def test_colour_jitter_distribution():
    images = _smooth_colour_images(256)
    host, _ = _views(images, "d", steps=4, batch=256, device=False)
    device, _ = _views(images, "d", steps=4, batch=256, device=True)
    for name, values in _colour_statistics(host).items():
        _assert_same_distribution(values, _colour_statistics(device)[name], name)


@pytest.mark.parametrize("letter,rate", [("c", 0.2), ("d", 0.8), ("e", 0.5), ("b", 0.5)])
def test_grayscale_jitter_flip_and_blur_rates(letter, rate):
    images = _smooth_colour_images(97, seed=1)
    results = {}
    for device in (False, True):
        views, index = _views(images, letter, steps=4, batch=256, device=device)
        source = np.repeat((images[index] / 255.0)[:, None], 2, 1).reshape(views.shape)
        if letter == "c":
            applied = np.abs(views[..., 0] - views[..., 2]).max((1, 2)) < 1e-6
        elif letter == "e":
            applied = np.abs(views - source[:, :, ::-1]).max((1, 2, 3)) < 1e-5
        else:
            applied = np.abs(views - source).max((1, 2, 3)) > 1e-5
        results[device] = applied.mean()
        assert abs(applied.mean() - rate) < 0.035, (letter, device, applied.mean())
        if letter == "b":  # the blur's strength: total variation of the blurred views
            variation = np.abs(np.diff(views[applied], axis=1)).mean((1, 2, 3))
            results[f"variation {device}"] = variation
    if letter == "b":
        _assert_same_distribution(results["variation False"], results["variation True"],
                                  "blur total variation")


def test_all_letters_together():
    images = _smooth_colour_images(256, seed=2)
    host, _ = _views(images, "abcde", steps=4, batch=256, device=False)
    device, _ = _views(images, "abcde", steps=4, batch=256, device=True)
    for name, values in _colour_statistics(host).items():
        _assert_same_distribution(values, _colour_statistics(device)[name], name)


def test_solarize_matches_the_host_op():
    image = np.linspace(0, 1, 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    out = device_augment.solarize(image, jax.random.PRNGKey(0), p=1.0)
    np.testing.assert_allclose(out, np.where(image >= 0.5, 1 - image, image))


def test_resume_is_bit_exact_and_views_are_keyed_by_position():
    images = np.random.default_rng(1).integers(0, 256, (50, 12, 12, 3), np.uint8)
    labels = np.arange(50) % 5
    make = lambda: DeviceViews(images, labels, mesh=_mesh(), global_batch_size=8, seed=4,
                               augmentations="abcde", image_size=8, mean=(0.5,) * 3,
                               std=(0.2,) * 3)
    stream = make().iterator()
    from_start = [jax.device_get(next(stream)) for _ in range(8)]
    resumed = make().iterator(start_step=5)
    for step in (5, 6, 7):
        batch = jax.device_get(next(resumed))
        for key in ("views", "label", "index"):
            np.testing.assert_array_equal(batch[key], from_start[step][key])
    assert not np.array_equal(from_start[0]["views"][0], from_start[0]["views"][1])
    assert from_start[0]["views"].shape == (2, 8, 8, 8, 3)


def test_8_devices_make_the_batches_of_1():
    code = r"""
import json, jax, numpy as np
from jax.sharding import Mesh
from amcl_jax.data.device_augment import DeviceViews
images = np.random.default_rng(2).integers(0, 256, (40, 16, 16, 3), np.uint8)
labels = np.arange(40) % 4
def batches(devices):
    made = DeviceViews(images, labels, mesh=Mesh(np.asarray(devices), ("data",)),
                       global_batch_size=16, seed=1, augmentations="abcde", image_size=8,
                       mean=(0.5,) * 3, std=(0.2,) * 3)
    return [jax.device_get(made.batch(step)) for step in (0, 3)]
eight, one = batches(jax.devices()), batches(jax.devices()[:1])
print(json.dumps({"devices": jax.device_count(),
                  "equal": all(np.array_equal(a[k], b[k]) for a, b in zip(eight, one)
                               for k in ("views", "label", "index")),
                  "max_difference": max(float(np.abs(a["views"] - b["views"]).max())
                                        for a, b in zip(eight, one))}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=_runs.ROOT,
                            env=_runs.run_env(8), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, _runs.stderr_excerpt(result.stderr)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["equal"], report


def test_augment_on_resolution_and_errors():
    cpu = jax.devices()[0]
    images = np.zeros((4, 8, 8, 3), np.uint8)
    resolve = device_augment.resolve_augment_on
    assert resolve("host", images, cpu, tensorflow_available=True) == "host"
    assert resolve("auto", images, cpu, tensorflow_available=True) == "host"
    assert resolve("auto", images, cpu, tensorflow_available=False) == "device"
    assert resolve("device", images, cpu, tensorflow_available=True) == "device"
    with pytest.raises(ValueError, match="data.augment_on='device'.*data.streaming"):
        resolve("device", object(), cpu, tensorflow_available=True)
    with pytest.raises(ValueError, match="data.augment_on"):
        resolve("gpu", images, cpu, tensorflow_available=True)

    class SmallDevice:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 4 * 8 * 8 * 3}

    with pytest.raises(ValueError, match="does not fit.*data.augment_on='host'"):
        resolve("device", images, SmallDevice(), tensorflow_available=True)
    assert resolve("auto", images, SmallDevice(), tensorflow_available=True) == "host"
    assert resolve("auto", images[:1], SmallDevice(), tensorflow_available=True) == "device"

    config = get_default_config()
    config.data.augment_on = "gpu"
    with pytest.raises(ConfigError, match="data.augment_on"):
        validate_config(config)
    config.data.augment_on = "device"
    config.data.streaming = True
    with pytest.raises(ConfigError, match="data.augment_on"):
        validate_config(config)


def test_numpy_eval_iterator_equals_the_tf_one():
    images = np.random.default_rng(3).integers(0, 256, (21, 8, 8, 3), np.uint8)
    labels = np.arange(21) % 3
    for size in (8, 6):
        kwargs = dict(batch_size=8, image_size=size, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25),
                      process_index=1, process_count=2)
        host = list(pipeline.eval_iterator(images, labels, **kwargs))
        device = list(device_augment.eval_iterator(images, labels, **kwargs))
        assert len(host) == len(device) == 3
        for h, d in zip(host, device, strict=True):
            for key in ("label", "index", "mask"):
                np.testing.assert_array_equal(d[key], h[key])
            np.testing.assert_allclose(d["image"], h["image"], atol=0 if size == 8 else 2e-5)
