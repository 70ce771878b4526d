"""Tests for amcl_jax.data: augmentations, (seed, step)-pure pipelines, and data sources.

All data are made here (no downloads, nothing outside the temporary folders).
"""

import os
import tarfile

import numpy as np
import pytest
from conftest import tiny_config

from amcl_jax import data
from amcl_jax.data import (
    augment,
    dataset_stats,
    eval_iterator,
    folders,
    load_split,
    make_view_fn,
    steps_per_epoch,
    train_iterator,
    validate_letters,
)
from amcl_jax.data._tf import tf

SEED_A = tf.constant([1, 2], tf.int64)
SEED_B = tf.constant([3, 4], tf.int64)


def _image(size=16, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.random((size, size, 3), dtype=np.float32))


def _uint8_images(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# augmentations
# ---------------------------------------------------------------------------------------------
RANDOM_OPS = {
    "crop": lambda x, s: augment.random_resized_crop(x, s, 12),
    "blur": lambda x, s: augment.gaussian_blur(x, s, p=1.0),
    "jitter": lambda x, s: augment.color_jitter(x, s, strength=0.5, p=1.0),
    "solarize_view": lambda x, s: make_view_fn("abcde", image_size=12, solarize_p=0.5)(x, s),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_random_op_shape_range_determinism(name):
    op = RANDOM_OPS[name]
    image = _image()
    out = op(image, SEED_A).numpy()
    size = 16 if name in ("blur", "jitter") else 12
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, op(image, SEED_A).numpy())
    assert not np.array_equal(out, op(image, SEED_B).numpy())


@pytest.mark.parametrize(
    "op",
    [
        augment.gaussian_blur,
        augment.random_grayscale,
        augment.color_jitter,
        augment.random_flip,
        augment.solarize,
    ],
)
def test_probability_zero_is_identity(op):
    image = _image()
    for seed in (SEED_A, SEED_B):
        np.testing.assert_array_equal(op(image, seed, p=0.0).numpy(), image.numpy())


def test_probability_one_always_applies():
    image = _image()
    for seed in range(5):
        s = tf.constant([seed, 7], tf.int64)
        flipped = augment.random_flip(image, s, p=1.0).numpy()
        np.testing.assert_array_equal(flipped, image.numpy()[:, ::-1])
        gray = augment.random_grayscale(image, s, p=1.0).numpy()
        np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
        np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
        solar = augment.solarize(image, s, p=1.0, threshold=0.5).numpy()
        x = image.numpy()
        np.testing.assert_allclose(solar, np.where(x >= 0.5, 1 - x, x))
        blurred = augment.gaussian_blur(image, s, p=1.0, sigma=(1.0, 2.0)).numpy()
        assert not np.allclose(blurred, x)


def test_probability_is_respected_roughly():
    image = _image(8)
    flips = [
        not np.array_equal(augment.random_flip(image, tf.constant([i, 0]), p=0.5).numpy(),
                           image.numpy())
        for i in range(60)
    ]
    assert 15 < sum(flips) < 45


def test_crop_scale_bounds():
    # A crop of a ramp image shows which pixels were kept: its value range bounds the crop area.
    size = 40
    rows = np.repeat(np.arange(size, dtype=np.float32)[:, None], size, axis=1) / (size - 1)
    ramp = tf.constant(np.stack([rows, rows.T, np.zeros_like(rows)], axis=-1))
    areas = []
    for i in range(40):
        out = augment.random_resized_crop(ramp, tf.constant([i, 1]), 20, scale=(0.25, 0.5)).numpy()
        h = (out[..., 0].max() - out[..., 0].min()) * (size - 1) + 1
        w = (out[..., 1].max() - out[..., 1].min()) * (size - 1) + 1
        areas.append(h * w / size**2)
    assert min(areas) > 0.25 * 0.75 and max(areas) < 0.5 * 1.25
    full = augment.random_resized_crop(ramp, SEED_A, size, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(full.numpy(), ramp.numpy(), atol=1e-6)


def test_blur_kernel_size():
    assert [augment.blur_kernel_size(s) for s in (8, 32, 96, 224)] == [3, 3, 9, 23]


def test_letters_validation():
    assert validate_letters("abcde") == "abcde"
    assert validate_letters("ea") == "ea"
    for bad in ("abf", "aa", "x"):
        with pytest.raises(ValueError, match="data.augmentations.*abcde"):
            validate_letters(bad)
    with pytest.raises(ValueError, match="data.augmentations"):
        make_view_fn("abz", image_size=8)


def test_view_without_crop_is_resize_and_letters_order_free():
    image = _image(16)
    plain = make_view_fn("", image_size=8)(image, SEED_A).numpy()
    assert plain.shape == (8, 8, 3)
    same = make_view_fn("", image_size=16)(image, SEED_A).numpy()
    np.testing.assert_array_equal(same, image.numpy())
    a = make_view_fn("abcde", image_size=8)(image, SEED_A).numpy()
    b = make_view_fn("edcba", image_size=8)(image, SEED_A).numpy()
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------------------------
N = 24
IMAGES = _uint8_images(N)
LABELS = np.arange(N, dtype=np.int32) % 5
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _train(start_step=0, seed=0, batch=8, **kwargs):
    defaults = dict(
        global_batch_size=batch, seed=seed, start_step=start_step, augmentations="abcde",
        image_size=8, mean=MEAN, std=STD,
    )
    return train_iterator(IMAGES, LABELS, **{**defaults, **kwargs})


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_iterator_shapes_and_views():
    batch = next(_train(num_views=3))
    assert batch["views"].shape == (3, 8, 8, 8, 3) and batch["views"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert batch["index"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], LABELS[batch["index"]])
    assert not np.allclose(batch["views"][0], batch["views"][1])
    assert not np.allclose(batch["views"][1], batch["views"][2])


def test_train_iterator_deterministic_and_resumable():
    run = _take(_train(seed=3), 5)
    again = _take(_train(seed=3), 5)
    resumed = _take(_train(seed=3, start_step=3), 2)
    for a, b in zip(run, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(run[3:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = next(_train(seed=4))
    assert not np.array_equal(run[0]["index"], other["index"])


def test_train_iterator_epochs_are_permutations():
    batches = _take(_train(batch=8, augmentations=""), 6)  # 48 positions = 2 epochs of 24
    order = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(np.sort(order[:N]), np.arange(N))
    np.testing.assert_array_equal(np.sort(order[N:]), np.arange(N))
    assert not np.array_equal(order[:N], order[N:])
    # No augmentation: the views are the normalised stored images.
    expected = (IMAGES[batches[0]["index"]] / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(batches[0]["views"][0], expected, atol=1e-5)


def test_train_iterator_process_shards():
    full = _take(_train(batch=8), 2)
    shards = [_take(_train(batch=8, process_index=k, process_count=2), 2) for k in range(2)]
    for step in range(2):
        first, second = shards[0][step], shards[1][step]
        assert first["views"].shape == (2, 4, 8, 8, 3)
        assert not set(first["index"]) & set(second["index"])
        for key in ("index", "label"):
            np.testing.assert_array_equal(
                np.concatenate([first[key], second[key]]), full[step][key]
            )
        np.testing.assert_array_equal(
            np.concatenate([first["views"], second["views"]], axis=1), full[step]["views"]
        )
    with pytest.raises(ValueError, match="batch_size"):
        _train(batch=9, process_count=2)


def test_eval_iterator_covers_every_example_once():
    seen, masks = [], []
    for process in range(2):
        batches = list(
            eval_iterator(IMAGES, LABELS, batch_size=10, image_size=8, mean=MEAN, std=STD,
                          process_index=process, process_count=2)
        )
        assert len(batches) == 3  # ceil(24 / 10), the same in every process
        for b in batches:
            assert b["image"].shape == (5, 8, 8, 3) and b["mask"].dtype == bool
            seen.extend(b["index"][b["mask"]])
            np.testing.assert_array_equal(b["label"][b["mask"]], LABELS[b["index"][b["mask"]]])
            assert np.all(b["label"][~b["mask"]] == -1)
            masks.append(b["mask"])
    assert sorted(seen) == list(range(N))
    assert sum(m.sum() for m in masks) == N
    single = list(eval_iterator(IMAGES, LABELS, batch_size=10, image_size=4, mean=MEAN, std=STD))
    assert [b["image"].shape for b in single] == [(10, 4, 4, 3)] * 3
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in single])[:N], np.arange(N))


def test_steps_per_epoch():
    assert steps_per_epoch(50000, 512) == 97
    assert steps_per_epoch(10, 512) == 1


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
def test_digits_are_scikit_learns_load_digits(monkeypatch):
    from sklearn.datasets import load_digits

    from amcl_jax.data import sources

    reference = load_digits()
    for read in ("csv", "load_digits"):
        if read == "load_digits":  # A scikit-learn that keeps the file elsewhere.
            monkeypatch.setattr(os.path, "isfile", lambda path: False)
        images, labels = sources.digits_arrays()
        np.testing.assert_array_equal(images, reference.images, err_msg=read)
        np.testing.assert_array_equal(labels, reference.target, err_msg=read)
        assert images.dtype == reference.images.dtype, read


def test_digits_split():
    train, train_labels, classes = load_split("digits", "train", data_dir=None)
    test, test_labels, _ = load_split("digits", "test", data_dir=None)
    assert classes == 10
    assert train.shape[1:] == (8, 8, 3) and train.dtype == np.uint8
    assert len(train) + len(test) == 1797 and 290 <= len(test) <= 310
    assert set(np.unique(test_labels)) == set(range(10)) and train_labels.dtype == np.int32
    assert train.max() == 255
    resized, _, _ = load_split("digits", "test", data_dir=None, image_size=16)
    assert resized.shape == (len(test), 16, 16, 3)
    both, _, _ = load_split("digits", "train+test", data_dir=None)
    assert len(both) == 1797


def _write_image_folder(root):
    """<root>/{train,test}/{cat,ant,bee}/k.png; returns the expected (split -> (images, labels))."""
    classes = ["cat", "ant", "bee"]  # sorted: ant=0, bee=1, cat=2
    expected = {}
    for split, count in (("train", 3), ("test", 2)):
        images, labels = [], []
        for name in sorted(classes):
            os.makedirs(os.path.join(root, split, name))
            for k in range(count):
                pixels = _uint8_images(1, size=6, seed=len(images) + 100 * len(expected))[0]
                path = os.path.join(root, split, name, f"{k:02d}.png")
                tf.io.write_file(path, tf.io.encode_png(pixels))
                images.append(pixels)
                labels.append(sorted(classes).index(name))
        expected[split] = (np.stack(images), np.array(labels, np.int32))
    return expected


def test_image_folder_and_archive(tmp_path, monkeypatch):
    folder = tmp_path / "pets"
    expected = _write_image_folder(str(folder))
    for split in ("train", "test"):
        images, labels, classes = load_split("cifar10", split, data_dir=str(folder))
        assert classes == 3
        np.testing.assert_array_equal(images, expected[split][0])
        np.testing.assert_array_equal(labels, expected[split][1])

    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="pets")  # wrapped in one top-level folder, as archives often are
    extractions = []
    real_extract = folders._extract_into
    monkeypatch.setattr(
        folders, "_extract_into", lambda *a: (extractions.append(a), real_extract(*a))
    )
    cache = str(tmp_path / "cache")
    for _ in range(2):
        images, labels, classes = load_split(
            "image_folder", "train", data_dir=str(archive), cache_dir=cache
        )
        np.testing.assert_array_equal(images, expected["train"][0])
        np.testing.assert_array_equal(labels, expected["train"][1])
    test, _, _ = load_split("x", "test", data_dir=str(archive), cache_dir=cache, image_size=4)
    assert test.shape == (6, 4, 4, 3)
    assert len(extractions) == 1
    assert [e for e in os.listdir(cache)] == [os.path.basename(folders.archive_cache_path(
        str(archive), cache))]
    with pytest.raises(ValueError, match="data.data_dir"):
        load_split("image_folder", "validation", data_dir=str(folder))


def test_tfds_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        images, labels, classes = load_split("cifar10", "train", data_dir=None)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int32 and classes == 10


def test_tfds_stored_dataset_under_official_name(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder("cifar10", data_dir=data_dir)
    rng = np.random.default_rng(0)

    def examples(n):
        return [  # (key, example) pairs
            (i, {"id": f"ex{i}", "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                 "label": int(i % 10)})
            for i in range(n)
        ]

    tfds.dataset_builders.store_as_tfds_dataset(
        name="cifar10", version=str(builder.version), features=builder.info.features,
        split_datasets={"train": examples(5), "test": examples(3)}, data_dir=data_dir,
    )
    images, labels, classes = load_split("cifar10", "train", data_dir=data_dir, download=False)
    assert images.shape == (5, 32, 32, 3) and classes == 10
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]
    both, _, _ = load_split("cifar10", "train+test", data_dir=data_dir, image_size=16)
    assert both.shape == (8, 16, 16, 3)
    with pytest.raises(ValueError, match="data.data_dir"):
        load_split("cifar100", "train", data_dir=data_dir, download=False)


def test_unknown_dataset_raises(tmp_path):
    with pytest.raises(ValueError, match="data.dataset"):
        load_split("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_dataset_stats():
    assert dataset_stats("cifar10")[0][0] == pytest.approx(0.4914)
    assert dataset_stats("cifar10:3.0.2") == dataset_stats("cifar10")
    assert dataset_stats("something_else") == ((0.5,) * 3, (0.5,) * 3)


def _write_mixed_folder(root, sizes=((9, 13), (16, 16), (21, 10), (12, 30), (16, 11))):
    """<root>/{train,test}/{a,b}/k.{png,jpg} of different sizes, PNG and JPEG alike."""
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        for name in ("a", "b"):
            os.makedirs(os.path.join(root, split, name))
            for k, (height, width) in enumerate(sizes):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                encode = tf.io.encode_png if k % 2 else tf.io.encode_jpeg
                suffix = "png" if k % 2 else "jpg"
                tf.io.write_file(os.path.join(root, split, name, f"{k}.{suffix}"), encode(pixels))


@pytest.mark.parametrize("image_size", [16, 12])
def test_streamed_folder_yields_the_batches_of_the_folder_in_memory(tmp_path, image_size):
    """Files decoded as batches need them give the in-memory pipelines' batches, bit for bit:
    the same decoder and resize make the same pixels, on any step and process shard."""
    _write_mixed_folder(str(tmp_path))
    stats = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    in_memory, labels, classes = load_split("x", "train", data_dir=str(tmp_path), image_size=16)
    files, file_labels, file_classes = load_split("x", "train", data_dir=str(tmp_path),
                                                  image_size=16, streaming=True)
    assert isinstance(files, data.ImageFiles) and len(files) == len(in_memory) == 10
    assert classes == file_classes == 2
    np.testing.assert_array_equal(labels, file_labels)
    for start_step, process_index in ((0, 0), (3, 1)):
        kwargs = dict(global_batch_size=8, seed=5, start_step=start_step, augmentations="abcde",
                      image_size=image_size, process_index=process_index, process_count=2,
                      **stats)
        expected = _take(train_iterator(in_memory, labels, **kwargs), 2)
        streamed = _take(train_iterator(files, file_labels, **kwargs), 2)
        for want, got in zip(expected, streamed, strict=True):
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    kwargs = dict(batch_size=4, image_size=image_size, process_index=1, process_count=2, **stats)
    expected = list(eval_iterator(in_memory, labels, **kwargs))
    streamed = list(eval_iterator(files, file_labels, **kwargs))
    assert len(expected) == len(streamed) == 3
    for want, got in zip(expected, streamed, strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_streamed_folder_at_native_sizes_subsets_and_archives(tmp_path):
    folder = tmp_path / "mixed"
    _write_mixed_folder(str(folder))
    files, labels, _ = load_split("x", "test", data_dir=str(folder), streaming=True)
    assert files.size is None  # Native sizes: the views are cropped from each whole image.
    read = files.reader()
    assert [tuple(read(i).shape) for i in range(5)] == [(9, 13, 3), (16, 16, 3), (21, 10, 3),
                                                          (12, 30, 3), (16, 11, 3)]
    batch = next(train_iterator(files, labels, global_batch_size=10, seed=0, start_step=0,
                                augmentations="abcde", image_size=8, mean=(0.5,) * 3,
                                std=(0.5,) * 3))
    assert batch["views"].shape == (2, 10, 8, 8, 3)
    assert sorted(batch["index"].tolist()) == list(range(10))  # One epoch: each image once.
    rows = list(eval_iterator(files, labels, batch_size=4, image_size=8, mean=(0.5,) * 3,
                              std=(0.5,) * 3))
    image = np.concatenate([r["image"] for r in rows])[np.concatenate([r["mask"] for r in rows])]
    want = augment.resize(tf.image.convert_image_dtype(read(3), tf.float32), 8)
    np.testing.assert_allclose(image[3], (want.numpy() - 0.5) / 0.5, atol=1e-6)

    # Subsets index the files as they index an array (dropping examples, fixed subsets).
    subset = files[labels == 1][np.array([4, 0])]
    assert list(subset.paths) == [files.paths[9], files.paths[5]]
    assert isinstance(subset, data.ImageFiles) and subset.size is None

    archive = tmp_path / "mixed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="mixed")
    cache = str(tmp_path / "cache")
    from_archive, archive_labels, _ = load_split("image_folder", "test", data_dir=str(archive),
                                                 cache_dir=cache, image_size=6, streaming=True)
    np.testing.assert_array_equal(archive_labels, labels)
    np.testing.assert_array_equal(
        np.stack([from_archive.reader()(i).numpy() for i in range(len(from_archive))]),
        load_split("image_folder", "test", data_dir=str(archive), cache_dir=cache,
                   image_size=6)[0])


def test_streaming_needs_image_files(tmp_path):
    with pytest.raises(ValueError, match=r"data.streaming=True .*\(data.dataset='digits'"):
        load_split("digits", "train", data_dir=None, streaming=True)
    with pytest.raises(ValueError, match=r"data.streaming=True .*data.streaming=False"):
        load_split("cifar10", "train", data_dir=str(tmp_path), streaming=True)
    with pytest.raises(ValueError, match=r"data.dataset='image_folder' needs data.data_dir"):
        load_split("image_folder", "train", data_dir=None, streaming=True)


def test_a_streamed_file_that_cannot_be_decoded_is_named(tmp_path):
    """tf.data's decode error names no file; the streamed pipelines name it, and the setting."""
    _write_mixed_folder(str(tmp_path))
    bad = tmp_path / "train" / "b" / "2.jpg"
    bad.write_bytes(b"not an image")
    files, labels, _ = load_split("x", "train", data_dir=str(tmp_path), image_size=8,
                                  streaming=True)
    assert files.unreadable(np.arange(10)) == [str(bad)]
    stats = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
    # Batches of 4 over positions 8, 9, ...: the bad file (index 7) is reached in epoch 1.
    batches = train_iterator(files, labels, global_batch_size=4, seed=1, start_step=2,
                             augmentations="ae", image_size=8, **stats)
    message = rf"data.streaming=True: cannot decode 1 image file\(s\) of batch \d+: {bad}"
    with pytest.raises(ValueError, match=message):
        for _ in range(10):
            next(batches)
    with pytest.raises(ValueError, match=r"of batch 1: .*2\.jpg .*data.corrupt_images='skip'"):
        list(eval_iterator(files, labels, batch_size=4, image_size=8, **stats))
    # In memory the same folder loads without the file (reported), as before.
    images, kept_labels, _ = load_split("x", "train", data_dir=str(tmp_path), image_size=8)
    assert len(images) == len(kept_labels) == 9


def test_blur_and_solarize_probabilities_per_view():
    """A per-view pair (BYOL's solarize 0 / 0.2, here 0 / 1) applies each entry to its view."""
    from amcl_jax.data.pipeline import per_view

    assert per_view(0.5, 2) == (0.5, 0.5)
    assert per_view((1.0, 0.1), 4) == (1.0, 0.1, 1.0, 0.1)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        per_view((0.5, 1.5), 2)
    images = np.tile(np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None, None], (4, 1, 8, 3))
    batch = next(train_iterator(
        images, np.zeros(4, np.int64), global_batch_size=4, seed=0, start_step=0,
        augmentations="", image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        solarize_p=(0.0, 1.0)))
    plain = images.astype(np.float32) / 255
    np.testing.assert_allclose(batch["views"][0], plain, atol=1e-6)
    np.testing.assert_allclose(batch["views"][1], np.where(plain >= 0.5, 1 - plain, plain),
                               atol=1e-6)


def test_imagenet_from_tfds_resizes_each_image_while_loading():
    """ImageNet's images differ in size: the TFDS loader resizes each one in tf.data (as
    `data.load_size` asks) before batching them; without a size it says which field to set."""
    import tensorflow_datasets as tfds

    from amcl_jax import recipes
    from amcl_jax.data import inputs
    from amcl_jax.data.files import resize_square

    config = recipes.load_config_file(os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
        "imagenet_amcl_simclr.py"))
    config.data.load_size = 24
    with tfds.testing.mock_data(num_examples=6):
        images, labels, num_classes = inputs.load_data(config, config.data.eval_test_split)
        raw = list(tfds.load("imagenet2012", split="validation").as_numpy_iterator())
        with pytest.raises(ValueError, match="data.load_size"):
            load_split("imagenet2012", "validation", data_dir=None)
    assert len({example["image"].shape for example in raw}) > 1  # mixed sizes, as ImageNet's
    assert images.shape == (6, 24, 24, 3) and images.dtype == np.uint8 and num_classes == 1000
    np.testing.assert_array_equal(
        images, np.stack([resize_square(example["image"], 24).numpy() for example in raw]))
    np.testing.assert_array_equal(labels, [example["label"] for example in raw])


def test_centre_crop_resizes_the_shorter_side_and_keeps_the_middle():
    """ImageNet evaluation: shorter side to round(8 / 0.875) = 9, then the central 8 x 8."""
    from amcl_jax.data.files import resize_centre_crop

    rng = np.random.default_rng(0)
    for shape, resized_shape, top, left in [((12, 24, 3), (9, 18), 0, 5),
                                            ((30, 10, 3), (27, 9), 9, 0),
                                            ((8, 8, 3), (9, 9), 0, 0)]:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        resized = tf.image.resize(tf.cast(image, tf.float32), resized_shape, antialias=True)
        expected = np.round(np.clip(resized.numpy()[top:top + 8, left:left + 8], 0, 255))
        got = resize_centre_crop(tf.constant(image), 8).numpy()
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected.astype(np.uint8))


def test_imagenet_evaluation_loads_centre_crops_and_pretraining_keeps_its_load_size():
    """The offline modes' splits (evaluate.common.load_labelled_split) of ImageNet are centre
    crops at data.image_size; pretraining still loads squares at data.load_size; CIFAR-10 is
    evaluated as loaded."""
    import tensorflow_datasets as tfds

    from amcl_jax.data import inputs
    from amcl_jax.data.files import resize_centre_crop
    from amcl_jax.evaluate import common

    config = tiny_config(**{"data.dataset": "imagenet2012", "data.image_size": 8,
                            "data.load_size": 16})
    cifar = tiny_config(**{"data.load_size": 16})
    with tfds.testing.mock_data(num_examples=6):
        raw = list(tfds.load("imagenet2012", split="validation").as_numpy_iterator())
        evaluated, labels, _ = common.load_labelled_split(config, "validation")
        pretraining, _, _ = inputs.load_data(config, "validation")
        cifar_evaluated, _, _ = common.load_labelled_split(cifar, "test")
    assert len({example["image"].shape for example in raw}) > 1  # Mixed sizes.
    np.testing.assert_array_equal(evaluated, np.stack(
        [resize_centre_crop(example["image"], 8).numpy() for example in raw]))
    np.testing.assert_array_equal(labels, [example["label"] for example in raw])
    assert pretraining.shape == (6, 16, 16, 3) and cifar_evaluated.shape[1:3] == (16, 16)


def test_the_monitor_reads_streamed_imagenet_files_as_centre_crops(tmp_path):
    """Streamed at native size, an ImageNet-style split is read by the kNN monitor (bank and
    queries) as evaluation reads it; files of other datasets, or resized at load, stay as they
    are."""
    from PIL import Image

    from amcl_jax.data import inputs
    from amcl_jax.data.files import resize_centre_crop

    rng = np.random.default_rng(0)
    paths, originals = [], []
    for index, shape in enumerate([(12, 24, 3), (30, 10, 3), (8, 8, 3)]):
        originals.append(rng.integers(0, 256, size=shape, dtype=np.uint8))
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(originals[-1]).save(paths[-1])
    native = data.ImageFiles(paths)
    config = tiny_config(**{"data.dataset": "imagenet2012", "data.image_size": 8})
    monitored = inputs.monitor_images(config, native)
    assert monitored.size == 8 and monitored.centre_crop
    assert inputs.monitor_images(tiny_config(), native) is native
    resized_at_load = data.ImageFiles(paths, 16)
    assert inputs.monitor_images(config, resized_at_load) is resized_at_load
    batch = next(eval_iterator(monitored, np.zeros(3, np.int32), batch_size=3, image_size=8,
                               mean=(0.0,) * 3, std=(1.0,) * 3))
    expected = np.stack([resize_centre_crop(tf.constant(o), 8).numpy() for o in originals])
    np.testing.assert_allclose(batch["image"], expected / 255.0, atol=1e-6)


def test_resize_without_tensorflow_is_within_one_grey_level_of_tf():
    """`files.resize_square_without_tensorflow` (JAX) against `tf.image.resize(antialias=True)`
    on the same images: the upsampled digits are identical; random images, shrunk or enlarged,
    differ by at most one grey level on under 1% of pixels (its docstring's tolerance)."""
    from amcl_jax.data.files import resize_square, resize_square_without_tensorflow
    from amcl_jax.data.sources import _load_digits

    digits = _load_digits("train")[0]
    for size in (16, 32):  # The quickstart's 8 -> 16, and 8 -> 32.
        np.testing.assert_array_equal(resize_square_without_tensorflow(digits, size),
                                      resize_square(digits, size).numpy())
    rng = np.random.default_rng(0)
    for shape, size in [((32, 37, 29, 3), 16), ((32, 32, 32, 3), 24), ((32, 10, 12, 3), 8),
                        ((8, 20, 20, 3), 45), ((64, 8, 8, 3), 5)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        got = resize_square_without_tensorflow(images, size)
        assert got.shape == (shape[0], size, size, 3) and got.dtype == np.uint8
        difference = np.abs(got.astype(int) - resize_square(images, size).numpy().astype(int))
        assert difference.max() <= 1 and np.mean(difference > 0) < 0.01, (shape, size)
