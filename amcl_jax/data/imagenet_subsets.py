"""ImageNet subsets: ImageNet-100 (the CMC class list) from TFDS `imagenet2012` or an image folder.

ImageNet-100 is the 100-class subset introduced by CMC (Tian et al., 2019,
github.com/HobbitLong/CMC, `imagenet100.txt`) and used by most contrastive-learning papers since.
Labels are the position in `IMAGENET100_SYNSETS` (0..99), so they are the same whichever source
the images come from.

Two sources:

- TFDS `imagenet2012` (a manual download placed in `<data_dir>/downloads/manual`, prepared once
  by TFDS): examples are filtered on their label inside tf.data before they are decoded into
  memory, splits "train" and "validation".
- an image folder laid out ``<split>/<synset>/<image>`` (the usual ``train/`` and ``val/``
  folders of ImageNet): only the 100 synset folders are read.

`load_subset` resizes every image once to ``image_size`` (shorter side resize + centre crop is
not applied: images are resized to a square, which is what the in-memory pipeline expects);
ImageNet-100 at 160 pixels holds ~126k x 77 KB = 9.7 GB in memory, at 224 ~19 GB. From an image
folder, ``streaming=True`` returns the subset's files instead (`files.ImageFiles`), decoded and
resized as the input pipeline reads them.
"""

from __future__ import annotations

import os

import numpy as np

from amcl_jax.data._tf import graph_fn, tf
from amcl_jax.data.files import ImageFiles, decode_image, read_image

# github.com/HobbitLong/CMC/blob/master/imagenet100.txt, in that file's order.
IMAGENET100_SYNSETS: tuple[str, ...] = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406",
    "n02091831", "n04517823", "n04589890", "n03062245", "n01773797",
    "n01735189", "n07831146", "n07753275", "n03085013", "n04485082",
    "n02105505", "n01983481", "n02788148", "n03530642", "n04435653",
    "n02086910", "n02859443", "n13040303", "n03594734", "n02085620",
    "n02099849", "n01558993", "n04493381", "n02109047", "n04111531",
    "n02877765", "n04429376", "n02009229", "n01978455", "n02106550",
    "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838",
    "n04099969", "n04592741", "n03891251", "n02701002", "n03379051",
    "n02259212", "n07715103", "n03947888", "n04026417", "n02326432",
    "n03637318", "n01980166", "n02113799", "n02086240", "n03903868",
    "n02483362", "n04127249", "n02089973", "n03017168", "n02093428",
    "n02804414", "n02396427", "n04418357", "n02172182", "n01729322",
    "n02113978", "n03787032", "n02089867", "n02119022", "n03777754",
    "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542",
    "n02018207", "n04067472", "n03930630", "n03584829", "n02123045",
    "n04229816", "n02100583", "n03642806", "n04336792", "n03259280",
    "n02116738", "n02108089", "n03424325", "n01855672", "n02090622",
)

SUBSETS: dict[str, tuple[str, ...]] = {"imagenet100": IMAGENET100_SYNSETS}
# TFDS imagenet2012 names its evaluation split "validation"; image folders usually call it "val".
TFDS_SPLITS = {"val": "validation", "test": "validation"}


def synset_to_label(synsets: tuple[str, ...]) -> dict[str, int]:
    return {synset: label for label, synset in enumerate(synsets)}


def filter_labels(labels: np.ndarray, label_names: list[str], synsets: tuple[str, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask (N,) bool, subset labels (N,) int32, -1 where dropped) for source labels that
    index `label_names` (e.g. TFDS imagenet2012's synset names)."""
    to_subset = synset_to_label(synsets)
    mapping = np.array([to_subset.get(name, -1) for name in label_names], np.int32)
    new = mapping[np.asarray(labels)]
    return new >= 0, new


def load_subset(subset: str, split: str, *, data_dir: str | None, image_size: int,
                download: bool = False, streaming: bool = False, centre_crop: bool = False
                ) -> tuple[np.ndarray | ImageFiles, np.ndarray, int]:
    """Images (N, S, S, 3) uint8 (or their `ImageFiles` when streaming), labels (N,) int32 in
    0..len(subset)-1, num_classes.

    `data_dir` is an image folder (``<split>/<synset>/...``) or a TFDS data_dir holding
    `imagenet2012` (in memory only); `split` may join splits with "+".
    """
    if subset not in SUBSETS:
        raise ValueError(f"data.dataset={subset!r}: known ImageNet subsets are {sorted(SUBSETS)}")
    synsets = SUBSETS[subset]
    parts = [_load_one(synsets, name.strip(), data_dir, image_size, download, streaming,
                       centre_crop) for name in split.split("+")]
    labels = np.concatenate([p[1] for p in parts])
    if streaming:
        return (ImageFiles(np.concatenate([p[0] for p in parts]), image_size, centre_crop), labels,
                len(synsets))
    return np.concatenate([p[0] for p in parts]), labels, len(synsets)


def _load_one(synsets, split, data_dir, image_size, download, streaming, centre_crop=False):
    if data_dir and os.path.isdir(os.path.join(data_dir, split)):
        paths, labels = _list_folder(synsets, os.path.join(data_dir, split))
        if streaming:
            return np.asarray(paths, dtype=object), labels
        return _decode_all(paths, image_size, centre_crop), labels
    if streaming:
        raise ValueError(
            f"data.streaming=True reads image folders: data.data_dir={data_dir!r} has no "
            f"{split!r} folder of synset folders (imagenet2012 from TFDS is loaded into memory: "
            f"data.streaming=False)")
    return _load_tfds(synsets, TFDS_SPLITS.get(split, split), data_dir, image_size, download,
                      centre_crop)


def _list_folder(synsets, split_dir):
    paths, labels = [], []
    for label, synset in enumerate(synsets):
        class_dir = os.path.join(split_dir, synset)
        if not os.path.isdir(class_dir):
            raise ValueError(f"data.data_dir: {class_dir!r} is missing (ImageNet-100 synset)")
        files = sorted(f for f in os.listdir(class_dir)
                       if f.lower().endswith((".jpeg", ".jpg", ".png")))
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return paths, np.asarray(labels, np.int32)


def _decode_all(paths, image_size, centre_crop=False):
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        graph_fn(lambda path: read_image(path, image_size, centre_crop)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def _load_tfds(synsets, split, data_dir, image_size, download, centre_crop=False):
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    names = builder.info.features["label"].names
    mapping = tf.constant([synset_to_label(synsets).get(n, -1) for n in names], tf.int32)
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(graph_fn(lambda ex: (ex["image"],
                                     tf.gather(mapping, tf.cast(ex["label"], tf.int32)))))
    ds = ds.filter(graph_fn(lambda image, label: label >= 0))  # Decode the subset's only.
    ds = ds.map(graph_fn(lambda image, label: (decode_image(image, image_size, centre_crop),
                                               label)),
                num_parallel_calls=tf.data.AUTOTUNE)
    chunks = list(ds.batch(1024).as_numpy_iterator())
    if not chunks:
        raise ValueError(f"imagenet2012 split {split!r} in {data_dir!r} has no subset images")
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
