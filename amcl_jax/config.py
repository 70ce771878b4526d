"""The default configuration and its start-up validation.

Every config file in `configs/` starts from `get_default_config()` and overrides a few fields, so a
field exists in exactly one place. The sections and checks of a method's own fields (`simclr`,
`moco`, ...) are declared by the method (`amcl_jax/methods/`) and composed here from the registry.
`validate_config` runs before anything heavy and raises `ConfigError` with one line that names the
field and what is allowed; `main.py` prints that line and exits without a traceback.
"""

from __future__ import annotations

import os

import ml_collections

from amcl_jax import forms

# The checks' building blocks live below every module that uses them (methods declare their own
# checks with them); re-exported here, where callers have always found them.
from amcl_jax.fields import ConfigError, fail, get_field, one_of, positive_integer, set_field  # noqa: F401

NEGATIVES = ("topk", "max", "logsumexp")
TEMPERATURE_NETS = ("pair_score", "concat_mlp")
AMCL_LOSSES = ("paper", "released_code")
TEMPERATURE_OBJECTIVES = ("contrast", "likelihood", "row_likelihood")
ADAPTIVE_TEMPERATURES = ("both", "positive", "negative", "none")
OPTIMIZERS = ("sgd", "lars")
SCHEDULES = ("cosine", "constant")
STEMS = ("cifar", "imagenet")
DTYPES = ("float32", "bfloat16")
CORRUPT_IMAGES = ("skip", "fail")
AUGMENT_ON = ("host", "device", "auto")  # as data.device_augment.AUGMENT_ON
AUGMENTATION_LETTERS = "abcde"
WANDB_MODES = ("online", "offline", "disabled")


def get_default_config() -> ml_collections.ConfigDict:
    """AMCL-SimCLR on CIFAR-10 with the paper's defaults (ResNet-18, batch 512, 800 epochs)."""
    config = ml_collections.ConfigDict()
    config.method = "simclr"
    config.seed = 0
    config.batch_size = 512  # Global batch, split over all devices of all hosts.
    config.num_epochs = 800
    config.total_steps = -1  # > 0 overrides num_epochs.
    config.log_every_steps = 50

    config.amcl = ml_collections.ConfigDict()
    config.amcl.enabled = True
    config.amcl.num_heads = 3
    # "project" (amcl-jax's reading of the paper), "authors" (their AMCL v2.0 code) or
    # "likelihood" (the project's with temperatures fit by likelihood alone; SimCLR): the
    # settings of the placeholders below (None) come from the form for the method
    # (amcl_jax/forms.py, resolved where a run starts); set one to override the form for that
    # field alone. "project" by
    # measurement: the authors' form collapses the heads (docs/amcl.md, README).
    config.amcl.form = "project"
    placeholder = ml_collections.config_dict.placeholder
    config.amcl.beta = placeholder(float)  # authors: 1e-4 (Barlow Twins 1e-6); project: 0.1.
    # "topk" (Eq. 5: the amcl.topk most similar negatives), "max" (the table's hard max) or
    # "logsumexp" (a soft max). authors: topk; project: logsumexp.
    config.amcl.negatives = placeholder(str)
    config.amcl.topk = 100  # k of "topk" (at most the number of negatives: 2N - 2, or the queue).
    # Omega's K: the head's output dimension D (authors; project too, except Barlow Twins: 1).
    config.amcl.omega_dim = placeholder(float)
    config.amcl.temperature_bounds = placeholder(tuple)  # authors: (1e-5, 2.0) everywhere.
    # "pair_score" (Eq. 3: sigmoid(-<phi(u), phi(v)>), phi D -> hidden -> D) or "concat_mlp"
    # (an MLP on [u; v], 2D -> hidden -> 1). authors: pair_score; project: concat_mlp.
    config.amcl.temperature_net = placeholder(str)
    config.amcl.temperature_hidden_dim = 128
    # One temperature network for all heads. authors: True; project: False (one per head).
    config.amcl.shared_temperature_net = placeholder(bool)
    config.amcl.loss = "paper"  # "released_code" reproduces the authors' released number.
    # Which temperatures come from the network (the temperature ablation; SimCLR only): "both"
    # (AMCL), "positive" (tau+ only), "negative" (tau- only) or "none"; the other side uses the
    # global constant simclr.temperature.
    config.amcl.adaptive_temperature = "both"
    config.amcl.chunk_size = 32  # Anchor rows per chunk of the log-sum-exp temperature grid
    # (32 keeps loss + gradient peak memory under 2x NT-Xent's at 4096 per view: bench/run.py).
    # Eq. 2.4 (SimCLR, MoCo): the positive joins the hard max over negatives. Only changes
    # negatives="max": the log-sum-exp always has the positive in it (the soft Eq. 2.4).
    config.amcl.infonce = False
    # What the temperatures learn from: "contrast" (the whole loss, Eq. 2.1; authors, project),
    # "likelihood" (each pair's Gaussian likelihood alone) or "row_likelihood" (one temperature
    # per anchor, its positive's, fit by its likelihood; the likelihood form). The last two:
    # SimCLR's log-sum-exp only, the features learning from the contrast at fixed temperatures.
    config.amcl.temperature_objective = placeholder(str)

    # The methods' own sections (simclr, moco, barlow_twins, byol, predictor), from the registry.
    from amcl_jax import methods  # The registry imports the models: late, to keep this light.

    for method in methods.registered():
        for section, fields in method.config_sections().items():
            config[section] = fields

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.width = 1.0
    config.model.stem = "cifar"
    # CPU backend only: which of XLA:CPU's convolutions and dots YNNPACK runs. "dot": dots only
    # (XLA's own convolution is >2x faster here: docs/history.md); "none"; "jaxlib": both,
    # jaxlib 0.10's default.
    config.model.xla_cpu_ynnpack = "dot"
    # CPU backend, ResNets, training only: each block's activations are computed once instead of
    # XLA:CPU recomputing them inside the backward pass (platform/cpu.py `fusion_barrier`).
    config.model.cpu_fusion_barriers = True
    # "bfloat16": convolutions and matmuls in bf16; params, optimizer state, BatchNorm statistics,
    # similarities, temperatures, log-sum-exps and regularisers stay float32.
    config.model.dtype = "float32"
    # BatchNorm statistics (encoder and BatchNorm heads): 1 = over the global batch (synchronized
    # BatchNorm, the default); -1 = per device (each device's shard, as PyTorch DDP without
    # SyncBatchNorm); G > 1 = G groups laid out like G devices, whatever the real device count.
    config.model.batch_norm_groups = 1
    # Memory levers for large models and batches (python -m amcl_jax.compile shows their effect):
    # remat: recompute each encoder block's activations in the backward pass (jax.checkpoint);
    # shard_params: split large parameters and their optimizer moments over the data axis
    # (FSDP-style; gathered when used), for ViT-L-sized models. Neither changes the numbers.
    config.model.remat = False
    config.model.shard_params = False

    config.projector = ml_collections.ConfigDict()
    config.projector.hidden_dim = 512
    config.projector.out_dim = 128
    config.projector.num_layers = 2

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "cifar10"
    config.data.data_dir = ""  # TFDS data_dir, an image folder, or an archive of one.
    config.data.download = True  # TFDS downloads when the data are missing (connected machines).
    config.data.cache_dir = ""  # Where archives are extracted; "" = ~/.cache/amcl_jax.
    config.data.train_split = "train"
    config.data.eval_train_split = "train"  # The kNN bank.
    config.data.eval_test_split = "test"  # The kNN queries.
    config.data.image_size = 32  # The views' size (random resized crop output).
    config.data.load_size = -1  # > 0: resize the stored images once at load (-1: native size).
    config.data.augmentations = "abcde"
    config.data.color_jitter_strength = 0.5
    # Per view (view v takes entry v mod the length): the paper's symmetric views; BYOL's
    # asymmetric ones are blur (1.0, 0.1) and solarize (0.0, 0.2).
    config.data.blur_p = (0.5, 0.5)
    config.data.solarize_p = (0.0, 0.0)
    config.data.num_views = 2
    config.data.max_train_examples = -1  # > 0: pretrain on a fixed random subset (cpu scale).
    # Image folders: "skip" drops (and reports) files that cannot be decoded, "fail" stops.
    config.data.corrupt_images = "skip"
    # True: image folders (or archives, ImageNet subsets' folders) stay on disk and the input
    # pipeline decodes each file when a batch needs it, instead of holding every image in memory.
    config.data.streaming = False
    # data.augmentations="" makes both views the same image; refused unless set to True.
    config.data.allow_no_augmentation = False
    # Where the views are made: "host" (tf.data on the CPU cores), "device" (a jitted function on
    # the accelerators, the uint8 split held on them; no TensorFlow needed) or "auto" (device on
    # a GPU/TPU, or without TensorFlow, when the split is in memory and fits; else host).
    config.data.augment_on = "auto"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.06  # For the global batch; no implicit scaling.
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 0
    config.optimizer.lars_trust_coefficient = 1e-3
    # Global gradient-norm clipping (optax.clip_by_global_norm) before weight decay; 0 = off.
    # Unset: 1.0 for AMCL in the authors' form, else off.
    config.optimizer.grad_clip_norm = placeholder(float)

    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = 1000
    config.eval.knn_k = 200
    config.eval.knn_temperature = 0.1
    config.eval.batch_size = 512
    config.eval.max_bank_examples = -1  # > 0 caps the kNN bank (quick looks on CPU).
    config.eval.max_query_examples = -1

    # Online linear probe: a linear classifier trained during pretraining on stop-gradient
    # encoder features of the first view (inference-mode BatchNorm, as evaluation sees them; one
    # extra forward pass per step), SGD + cosine decay; its test-split top-1 is reported at every
    # kNN evaluation. Needs labels (unlabelled examples, label -1, are left out of its loss).
    config.online_probe = ml_collections.ConfigDict()
    config.online_probe.enabled = False
    config.online_probe.learning_rate = 0.1
    config.online_probe.momentum = 0.9
    config.online_probe.num_classes = -1  # -1: the dataset's (resolved at start-up).

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.max_to_keep = 3

    # Weights & Biases: the same scalars as TensorBoard and metrics.jsonl, from the chief
    # (amcl_jax/metric_writers.py); needs `pip install 'amcl-jax[wandb]'`. mode "offline" writes
    # <workdir>/wandb without network (`wandb sync` uploads it later).
    config.logging = ml_collections.ConfigDict()
    config.logging.wandb = ml_collections.ConfigDict()
    config.logging.wandb.enabled = False
    config.logging.wandb.project = "amcl-jax"
    config.logging.wandb.entity = ""  # "": the account's default entity.
    config.logging.wandb.name = ""  # "": the workdir's folder name.
    config.logging.wandb.mode = "online"  # "online", "offline" or "disabled".
    return config


def _validate_amcl_form(config: ml_collections.ConfigDict) -> None:
    """The fields the AMCL form fills (amcl_jax/forms.py), resolved."""
    one_of(config, "amcl.negatives", NEGATIVES)
    one_of(config, "amcl.temperature_net", TEMPERATURE_NETS)
    shared = config.amcl.shared_temperature_net
    if not isinstance(shared, bool):
        fail("amcl.shared_temperature_net", shared, "must be true or false")
    beta = config.amcl.beta
    if not isinstance(beta, (int, float)) or beta < 0:
        fail("amcl.beta", beta, "must be a number >= 0")
    bounds = config.amcl.temperature_bounds
    if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
        fail("amcl.temperature_bounds", bounds, "must be (lower, upper) with 0 < lower < upper")
    if config.amcl.omega_dim <= 0:
        fail("amcl.omega_dim", config.amcl.omega_dim,
             "must be > 0 (unset: the form's, the head's output dimension)")
    clip = config.optimizer.grad_clip_norm
    if not isinstance(clip, (int, float)) or clip < 0:
        fail("optimizer.grad_clip_norm", clip, "must be >= 0 (0 turns clipping off)")
    if not isinstance(config.amcl.topk, int) or config.amcl.topk < 1:
        fail("amcl.topk", config.amcl.topk, "must be an integer >= 1")
    one_of(config, "amcl.temperature_objective", TEMPERATURE_OBJECTIVES)


def _check_likelihood_objective(config: ml_collections.ConfigDict, method) -> None:
    """The likelihood objectives exist for SimCLR's Eq. 2.1 with the log-sum-exp."""
    field, value = "amcl.temperature_objective", config.amcl.temperature_objective
    if not method.likelihood_temperatures:
        fail(field, value, f"is SimCLR's only (method {config.method!r}); use 'contrast' or "
             "amcl.form='project' / 'authors'")
    if config.amcl.negatives != "logsumexp":
        fail(field, value, f"needs amcl.negatives='logsumexp', not {config.amcl.negatives!r}")
    if config.amcl.loss != "paper" or config.amcl.adaptive_temperature != "both":
        fail(field, value, "needs amcl.loss='paper' and amcl.adaptive_temperature='both'")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
    """Checks every field that can be checked before loading data; raises ConfigError.

    The AMCL form's fields are checked as they resolve (`forms.resolve`); `config` itself is not
    changed."""
    # Registries and the CPU settings; imported late to keep this module light.
    from amcl_jax import methods, models
    from amcl_jax.platform import cpu

    one_of(config, "method", methods.available())
    if config.model.name not in models.ENCODERS:  # The names for tests are accepted, not offered.
        one_of(config, "model.name", models.encoder_names())
    one_of(config, "model.stem", STEMS)
    one_of(config, "model.xla_cpu_ynnpack", tuple(cpu.XLA_CPU_YNNPACK))
    one_of(config, "model.dtype", DTYPES)
    one_of(config, "optimizer.name", OPTIMIZERS)
    one_of(config, "optimizer.schedule", SCHEDULES)
    _validate_sizes(config)  # Before the AMCL form's fields, which resolve from these sizes.
    one_of(config, "amcl.form", forms.FORMS)
    config = forms.resolve(config)
    _validate_amcl_form(config)
    one_of(config, "amcl.loss", AMCL_LOSSES)
    one_of(config, "amcl.adaptive_temperature", ADAPTIVE_TEMPERATURES)
    method = methods.get_method(config.method)
    if (config.amcl.adaptive_temperature != "both"
            and not method.offers_temperature_ablation(config)):
        fail("amcl.adaptive_temperature", config.amcl.adaptive_temperature,
             "only SimCLR's Eq. 2.1 (amcl.loss=paper, not Eq. 2.4) offers a value other than "
             "both")
    if config.amcl.enabled and config.amcl.temperature_objective != "contrast":
        _check_likelihood_objective(config, method)
    one_of(config, "data.corrupt_images", CORRUPT_IMAGES)
    if not isinstance(config.data.get("streaming", False), bool):
        fail("data.streaming", config.data.streaming, "must be true or false")
    augment_on = config.data.get("augment_on", "host")  # Absent (older runs): the host.
    if augment_on not in AUGMENT_ON:
        fail("data.augment_on", augment_on,
             "allowed values are " + ", ".join(repr(a) for a in AUGMENT_ON))
    if augment_on == "device" and config.data.get("streaming", False):
        fail("data.augment_on", augment_on, "needs the training split in memory "
             "(data.streaming=false), or use data.augment_on='host' for streamed files")
    if not isinstance(config.amcl.enabled, bool):
        fail("amcl.enabled", config.amcl.enabled, "must be true or false")
    if not isinstance(config.model.get("cpu_fusion_barriers", False), bool):  # Absent: fine.
        fail("model.cpu_fusion_barriers", config.model.cpu_fusion_barriers,
             "must be true or false")
    if not isinstance(config.online_probe.enabled, bool):
        fail("online_probe.enabled", config.online_probe.enabled, "must be true or false")
    if config.online_probe.learning_rate <= 0:
        fail("online_probe.learning_rate", config.online_probe.learning_rate, "must be > 0")
    if not 0 <= config.online_probe.momentum < 1:
        fail("online_probe.momentum", config.online_probe.momentum, "must be in [0, 1)")
    for field in ("remat", "shard_params"):
        if not isinstance(config.model.get(field, False), bool):  # Absent (old configs): fine.
            fail(f"model.{field}", config.model[field], "must be True or False")
    if config.model.width <= 0:
        fail("model.width", config.model.width, "must be > 0")
    groups = config.model.batch_norm_groups
    if groups == -1:
        groups = num_devices
    if not isinstance(config.model.batch_norm_groups, int) or groups < 1:
        fail("model.batch_norm_groups", config.model.batch_norm_groups,
             "must be 1 (global statistics), -1 (per device) or a group count G > 1")
    if config.batch_size % groups:
        fail("model.batch_norm_groups", config.model.batch_norm_groups,
             f"gives {groups} groups, which must divide batch_size={config.batch_size}")
    if int(config.amcl.num_heads) < 1:
        fail("amcl.num_heads", config.amcl.num_heads, "must be an integer >= 1")
    if config.amcl.chunk_size < 1:
        fail("amcl.chunk_size", config.amcl.chunk_size, "must be >= 1")
    if not isinstance(config.amcl.infonce, bool):
        fail("amcl.infonce", config.amcl.infonce, "must be true or false")
    if config.amcl.enabled and not method.supports_amcl:
        fail("amcl.enabled", config.amcl.enabled,
             f"method {config.method!r} has no AMCL form; set amcl.enabled=False")
    if not method.any_number_of_views and config.data.num_views != 2:
        fail("data.num_views", config.data.num_views, f"method {config.method!r} needs 2")
    for each in methods.registered():
        each.check_config(config)
    method.check_run(config)
    if config.batch_size <= 0:
        fail("batch_size", config.batch_size, "must be > 0")
    if config.batch_size % num_devices:
        fail("batch_size", config.batch_size,
             f"must be divisible by the number of devices ({num_devices})")
    if config.eval.batch_size <= 0 or config.eval.batch_size % num_devices:
        fail("eval.batch_size", config.eval.batch_size,
             f"must be > 0 and divisible by the number of devices ({num_devices})")
    if config.total_steps < 0 and config.num_epochs <= 0:
        fail("num_epochs", config.num_epochs, "must be > 0 when total_steps is -1")
    if config.total_steps < -1:
        fail("total_steps", config.total_steps, "must be >= 0, or -1 to use num_epochs")
    if config.optimizer.learning_rate < 0:
        fail("optimizer.learning_rate", config.optimizer.learning_rate, "must be >= 0")
    if config.optimizer.weight_decay < 0:
        fail("optimizer.weight_decay", config.optimizer.weight_decay, "must be >= 0")
    if config.optimizer.warmup_steps < 0:
        fail("optimizer.warmup_steps", config.optimizer.warmup_steps, "must be >= 0")
    letters = config.data.augmentations
    if (not isinstance(letters, str) or set(letters) - set(AUGMENTATION_LETTERS)
            or len(set(letters)) != len(letters)):
        fail("data.augmentations", letters,
             "must be distinct letters from 'abcde' (a crop, b blur, c grayscale, "
             "d colour jitter, e flip)")
    if config.data.num_views < 2:
        fail("data.num_views", config.data.num_views, "must be >= 2")
    if config.data.image_size < 4:
        fail("data.image_size", config.data.image_size, "must be >= 4")
    for field in ("eval.every_steps", "checkpoint.every_steps", "log_every_steps"):
        section, name = field.split(".") if "." in field else (None, field)
        value = config[section][name] if section else config[name]
        if value < 1:
            fail(field, value, "must be >= 1")
    if config.eval.knn_k < 1:
        fail("eval.knn_k", config.eval.knn_k, "must be >= 1")
    if config.eval.knn_temperature <= 0:
        fail("eval.knn_temperature", config.eval.knn_temperature, "must be > 0")
    if config.checkpoint.max_to_keep < 1:
        fail("checkpoint.max_to_keep", config.checkpoint.max_to_keep, "must be >= 1")
    _validate_logging(config)
    _validate_dataset(config)


def _validate_sizes(config: ml_collections.ConfigDict) -> None:
    """Sizes and rates that would make the model or the data degenerate (a zero-width layer, a
    probability outside [0, 1], an empty subset, two identical views)."""
    for field in ("projector.hidden_dim", "projector.out_dim", "projector.num_layers",
                  "amcl.temperature_hidden_dim", "amcl.num_heads"):
        positive_integer(config, field)
    for field in ("data.max_train_examples", "data.load_size", "eval.max_bank_examples",
                  "eval.max_query_examples"):
        value = get_field(config, field)
        if value != -1 and value < 1:
            fail(field, value, "must be >= 1, or -1 for all")
    if config.data.color_jitter_strength < 0:
        fail("data.color_jitter_strength", config.data.color_jitter_strength, "must be >= 0")
    for field in ("data.blur_p", "data.solarize_p"):
        value = config.data.get(field.split(".")[1], ())  # Absent in configs written before.
        values = value if isinstance(value, tuple | list) else (value,)
        if not all(isinstance(p, int | float) and 0 <= p <= 1 for p in values):
            fail(field, value, "must be probabilities in [0, 1], one per view")
    if config.online_probe.num_classes != -1 and config.online_probe.num_classes < 2:
        fail("online_probe.num_classes", config.online_probe.num_classes,
             "must be >= 2, or -1 for the dataset's")
    if config.data.augmentations == "" and not config.data.get("allow_no_augmentation", False):
        fail("data.augmentations", "",
             "no augmentation makes both views the same image, which leaves nothing to learn; "
             "set data.allow_no_augmentation=True if that is what you want")


def _validate_logging(config: ml_collections.ConfigDict) -> None:
    """logging.wandb (absent from configs written before it: nothing to check)."""
    import importlib.util
    import sys

    wandb = config.get("logging", {}).get("wandb")
    if wandb is None:
        return
    if not isinstance(wandb.enabled, bool):
        fail("logging.wandb.enabled", wandb.enabled, "must be true or false")
    one_of(config, "logging.wandb.mode", WANDB_MODES)
    # Imported already (None: blocked), else findable on the path; not imported here.
    installed = (sys.modules["wandb"] is not None if "wandb" in sys.modules
                 else importlib.util.find_spec("wandb") is not None)
    if wandb.enabled and not installed:
        fail("logging.wandb.enabled", True, "the wandb package is not installed: pip install "
             "'amcl-jax[wandb]', or set logging.wandb.enabled=False")


def _validate_dataset(config: ml_collections.ConfigDict) -> None:
    """data.dataset names a loader (digits, image_folder, an ImageNet subset) or a TFDS builder;
    an unknown name fails here, with the closest known names, instead of at load."""
    import difflib

    dataset, data_dir = config.data.dataset, config.data.data_dir
    if dataset == "digits":
        if data_dir:
            fail("data.data_dir", data_dir,
                 "data.dataset='digits' ships with scikit-learn and reads no files; remove "
                 "data.data_dir, or set data.dataset='image_folder' to read that folder")
        return
    from amcl_jax.data.sources import DATA_DIR_ALLOWED, data_dir_problem

    # Before the workdir is written: a mistyped path must not become a TFDS download folder.
    problem = data_dir_problem(dataset, data_dir, config.data.download)
    if problem is not None:
        fail("data.data_dir", data_dir, f"it {problem}; allowed: {DATA_DIR_ALLOWED}")
    if data_dir and os.path.exists(os.path.expanduser(data_dir)):
        return  # An image folder or archive (read whatever the name), or a TFDS data_dir.
    if dataset == "image_folder":
        fail("data.data_dir", data_dir, "data.dataset='image_folder' needs data.data_dir, an "
             "existing folder (<dir>/<split>/<class>/<image>) or an archive of one")
    if dataset == "imagenet100":
        return
    try:
        import tensorflow_datasets as tfds

        builders = tfds.list_builders(with_community_datasets=False)
    except Exception:  # noqa: BLE001 (no TFDS, or a broken install: the loader will say)
        return
    name = dataset.split(":")[0].split("/")[0]
    if name in builders:
        return
    close = difflib.get_close_matches(name, ["digits", "image_folder", "imagenet100", *builders],
                                      n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    fail("data.dataset", dataset, "allowed values are 'digits', 'image_folder' (with "
         f"data.data_dir), 'imagenet100' or a TFDS dataset name{hint}")
