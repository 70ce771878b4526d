"""Linear probe: a linear classifier on the features of a frozen pretrained encoder.

Protocol (every field is recorded in `linear_probe.json`):

- The encoder is frozen: it runs in inference mode (BatchNorm uses its running statistics and
  updates nothing) in its own jitted call, and the classifier's gradient is taken with respect to
  the classifier's parameters only, so no gradient can reach the encoder. The encoder's parameter
  hash is checked to be unchanged at the end.
- Features are the backbone's global-average-pooled output (`feature_layer`), of un-augmented
  images by default (`augmentations=""`): then they are computed once and the classifier trains
  on the stored features (the fast path). With augmentation letters (e.g. "ae": random resized
  crop + flip, the usual "light" augmentation) every step encodes a freshly augmented batch.
- `feature_norm="standardize"` (default) subtracts the train features' mean and divides by their
  std per dimension (a non-affine BatchNorm in front of the classifier, as in MAE's probe);
  "l2" normalises each feature vector; "none" leaves them.
- Classifier: Dense(num_classes), zero-initialised; softmax cross-entropy; SGD (momentum 0.9) or
  LARS; cosine decay from `learning_rate` to 0 over `epochs` (100) epochs of `batch_size`; the
  last partial batch of an epoch is dropped; no warm-up.
- Reported: top-1 and top-5 accuracy on the test split (`data.eval_test_split` of the
  pretraining config unless `test_split` is set), after the last epoch (no model selection on
  the test split).
- Other data (`eval_dataset`, `eval_data_dir`; `common.evaluation_configs`): the classifier has
  the evaluation data's classes, the images the encoder's input contract (the pretraining
  data.image_size and normalisation); the result goes to `linear_probe_<dataset>.json` for
  another dataset.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from amcl_jax import data as data_lib
from amcl_jax import losses, optim, program
from amcl_jax.checkpoints import load_pretrained
from amcl_jax.evaluate import common
from amcl_jax.models import linear_classifier
from amcl_jax.state import params_sha256
from amcl_jax.workdir import atomic_write_json

RESULT_FILE = "linear_probe.json"
FEATURE_NORMS = ("standardize", "l2", "none")
PROBE_OPTIMIZERS = ("sgd", "lars")


def default_probe_config() -> ml_collections.ConfigDict:
    """The probe's options (`configs/linear_probe.py` returns this; override with --probe.*)."""
    probe = ml_collections.ConfigDict()
    probe.epochs = 100
    probe.batch_size = 256
    probe.optimizer = "sgd"  # "sgd" (momentum) or "lars" (no decay/trust ratio on the bias).
    probe.learning_rate = 0.1
    probe.momentum = 0.9
    probe.weight_decay = 0.0
    probe.augmentations = ""  # "": un-augmented images, precomputed features; e.g. "ae" (light).
    probe.feature_norm = "standardize"
    probe.feature_layer = "backbone"
    probe.train_split = ""  # "": the pretraining config's data.eval_train_split.
    probe.test_split = ""  # "": data.eval_test_split.
    probe.max_train_examples = -1
    probe.max_test_examples = -1
    probe.step = -1  # Checkpoint step; -1: the newest.
    probe.seed = 0
    return probe


def validate_probe_config(probe: ml_collections.ConfigDict) -> None:
    from amcl_jax.config import ConfigError

    if probe.optimizer not in PROBE_OPTIMIZERS:
        raise ConfigError(f"probe.optimizer={probe.optimizer!r} is invalid: allowed values are "
                          f"{', '.join(PROBE_OPTIMIZERS)}")
    if probe.feature_norm not in FEATURE_NORMS:
        raise ConfigError(f"probe.feature_norm={probe.feature_norm!r} is invalid: allowed values "
                          f"are {', '.join(FEATURE_NORMS)}")
    for field in ("epochs", "batch_size"):
        if probe[field] < 1:
            raise ConfigError(f"probe.{field}={probe[field]!r} is invalid: must be >= 1")
    if probe.augmentations:
        data_lib.validate_letters(probe.augmentations)


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------
def _cross_entropy(params, features: jax.Array, labels: jax.Array) -> jax.Array:
    """The online probe's loss (`models.linear_classifier`): every label here is valid."""
    return linear_classifier.cross_entropy(params, features, labels)[0]


def _build_tx(probe, total_steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(float(probe.learning_rate), max(total_steps, 1))
    if probe.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(float(probe.weight_decay)),
                           optax.sgd(schedule, momentum=float(probe.momentum) or None))
    return optax.lars(schedule, weight_decay=float(probe.weight_decay),
                      weight_decay_mask=optim.decay_mask, trust_ratio_mask=optim.decay_mask,
                      momentum=float(probe.momentum))


class FeatureNorm:
    """Per-dimension standardisation (train statistics), L2 normalisation, or nothing."""

    def __init__(self, kind: str, train_features: np.ndarray | None = None) -> None:
        self.kind = kind
        if kind == "standardize":
            self.mean = np.mean(train_features, axis=0).astype(np.float32)
            self.std = np.std(train_features, axis=0).astype(np.float32) + 1e-6

    def __call__(self, features):
        if self.kind == "standardize":
            return (features - self.mean) / self.std
        if self.kind == "l2":
            return losses.l2_normalize(features)
        return features


def train_linear_classifier(train_features: np.ndarray, train_labels: np.ndarray,
                            num_classes: int, probe: ml_collections.ConfigDict
                            ) -> tuple[dict[str, jax.Array], list[float]]:
    """The fast path: a linear classifier trained on precomputed features.

    Args:
      train_features: (N, F) float32, already normalised; train_labels: (N,) int in
        [0, num_classes).
      probe: the probe config (epochs, batch_size, optimizer, learning_rate, momentum,
        weight_decay, seed).

    Returns:
      params {"kernel": (F, K), "bias": (K,)} float32, and the mean loss of every epoch.
    """
    num_examples = len(train_features)
    batch = min(int(probe.batch_size), num_examples)
    steps = num_examples // batch
    tx = _build_tx(probe, steps * int(probe.epochs))
    params = linear_classifier.init(train_features.shape[1], num_classes)
    opt_state = tx.init(params)
    features = jnp.asarray(train_features, jnp.float32)
    labels = jnp.asarray(train_labels, jnp.int32)

    @jax.jit
    def epoch(params, opt_state, order):  # order: (steps, batch) int32 example indices
        def body(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(_cross_entropy)(params, features[idx], labels[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), order)
        return params, opt_state, jnp.mean(losses)

    rng = np.random.default_rng(int(probe.seed))
    history = []
    start = time.time()
    for _ in range(int(probe.epochs)):
        order = rng.permutation(num_examples)[: steps * batch].reshape(steps, batch)
        params, opt_state, loss = epoch(params, opt_state, jnp.asarray(order, jnp.int32))
        history.append(float(loss))
        log_epoch(len(history), int(probe.epochs), history[-1], start)
    return params, history


def log_epoch(epoch: int, epochs: int, loss: float, start: float) -> None:
    """One progress line per epoch: the epoch's mean loss, elapsed time and ETA."""
    elapsed = time.time() - start
    eta = elapsed / epoch * (epochs - epoch)
    print(f"linear probe epoch {epoch}/{epochs}  loss {loss:.4f}  elapsed {elapsed:.1f} s  "
          f"ETA {eta:.1f} s", flush=True)


def _train_on_augmented_images(config, probe, features_fn, variables, images, labels,
                               num_classes, norm: FeatureNorm):
    """Every step encodes a freshly augmented batch with the frozen encoder, then updates the
    classifier on those features (the encoder call is separate: it has no gradient)."""
    batch = min(int(probe.batch_size), len(images))
    steps_per_epoch = data_lib.steps_per_epoch(len(images), batch)
    total_steps = steps_per_epoch * int(probe.epochs)
    tx = _build_tx(probe, total_steps)
    mean, std = data_lib.dataset_stats(config.data.dataset)
    batches = data_lib.train_iterator(
        images, labels, global_batch_size=batch, seed=int(probe.seed), start_step=0,
        augmentations=probe.augmentations, image_size=config.data.image_size, num_views=1,
        mean=mean, std=std, color_jitter_strength=config.data.color_jitter_strength,
        blur_p=config.data.blur_p)
    params = None
    opt_state = None

    @jax.jit
    def step(params, opt_state, features, labels):
        loss, grads = jax.value_and_grad(_cross_entropy)(params, norm(features), labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history, losses = [], []
    start = time.time()
    for index in range(total_steps):
        example = next(batches)
        features = jax.lax.stop_gradient(features_fn(variables, example["views"][0]))
        if params is None:
            params = linear_classifier.init(features.shape[-1], num_classes)
            opt_state = tx.init(params)
        params, opt_state, loss = step(params, opt_state, features, example["label"])
        losses.append(loss)
        if (index + 1) % steps_per_epoch == 0:
            history.append(float(jnp.mean(jnp.stack(losses))))
            losses = []
            log_epoch(len(history), int(probe.epochs), history[-1], start)
    return params, history


def evaluate_classifier(params, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1 and top5 (fractions; top-k with k = min(5, num_classes)) of a linear classifier."""
    logits = np.asarray(linear_classifier.logits(params, jnp.asarray(features, jnp.float32)))
    labels = np.asarray(labels)
    k = min(5, logits.shape[1])
    top_k = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return {"top1": float(np.mean(top_k[:, 0] == labels)),
            "top5": float(np.mean(np.any(top_k == labels[:, None], axis=1)))}


# --------------------------------------------------------------------------------------------
# From a workdir
# --------------------------------------------------------------------------------------------
def run_linear_probe(workdir: str, probe: ml_collections.ConfigDict | None = None,
                     *, write: bool = True, eval_dataset: str | None = None,
                     eval_data_dir: str | None = None,
                     config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains and tests a linear probe on the newest (or `probe.step`) checkpoint of `workdir`.

    eval_dataset, eval_data_dir, config_overrides: other data, and evaluation fields of the
    pretraining config (`common.evaluation_configs`).
    Returns the result dict (`top1`, `top5`, `protocol`, ...) and writes it to
    `workdir/linear_probe.json` (`linear_probe_<dataset>.json` for another dataset).
    """
    probe = probe or default_probe_config()
    validate_probe_config(probe)
    common.check_overrides(config_overrides or {})  # Before reading the checkpoint.
    start = time.time()
    config, model, variables, step = load_pretrained(
        workdir, None if probe.step < 0 else int(probe.step))
    config, data_config = common.evaluation_configs(
        config, eval_dataset=eval_dataset, eval_data_dir=eval_data_dir,
        overrides=config_overrides, num_devices=jax.device_count())
    encoder_hash = params_sha256(variables["params"])
    train_split = probe.train_split or config.data.eval_train_split
    test_split = probe.test_split or config.data.eval_test_split
    train_images, train_labels, num_classes = common.load_labelled_split(
        data_config, train_split, probe.max_train_examples)
    test_images, test_labels, _ = common.load_labelled_split(
        data_config, test_split, probe.max_test_examples)
    features_fn = common.features_fn_for_layer(
        model, probe.feature_layer, program.compiler_options(config))
    train_features, train_y = common.extract(config, features_fn, variables, train_images,
                                             train_labels)
    test_features, test_y = common.extract(config, features_fn, variables, test_images,
                                           test_labels)
    norm = FeatureNorm(probe.feature_norm, train_features)
    if probe.augmentations:
        params, history = _train_on_augmented_images(
            config, probe, features_fn, variables, train_images, train_labels, num_classes, norm)
    else:
        params, history = train_linear_classifier(
            np.asarray(norm(train_features)), train_y, num_classes, probe)
    test_metrics = evaluate_classifier(params, np.asarray(norm(test_features)), test_y)
    train_metrics = evaluate_classifier(params, np.asarray(norm(train_features)), train_y)
    if params_sha256(variables["params"]) != encoder_hash:
        raise RuntimeError("the linear probe changed the encoder's parameters")
    result = {
        "top1": test_metrics["top1"],
        "top5": test_metrics["top5"],
        "train_top1": train_metrics["top1"],
        "checkpoint_step": int(step),
        "loss_history": history,
        "encoder_params_sha256": encoder_hash,
        "seconds": time.time() - start,
        "protocol": {
            "encoder": "frozen: inference-mode BatchNorm (running statistics), no gradient",
            "feature_layer": probe.feature_layer,
            "num_features": int(train_features.shape[1]),
            "features_from": (f"augmented images ({probe.augmentations}), re-encoded every step"
                              if probe.augmentations else
                              "un-augmented images, precomputed once"),
            "feature_norm": probe.feature_norm,
            "classifier": "linear (Dense), zero init, softmax cross-entropy",
            "optimizer": probe.optimizer,
            "learning_rate": float(probe.learning_rate),
            "momentum": float(probe.momentum),
            "weight_decay": float(probe.weight_decay),
            "schedule": "cosine decay to 0, no warm-up",
            "epochs": int(probe.epochs),
            "batch_size": int(probe.batch_size),
            "dataset": data_config.data.dataset,
            "pretraining_dataset": config.data.dataset,
            "train_split": train_split,
            "test_split": test_split,
            "num_train_examples": int(len(train_y)),
            "num_test_examples": int(len(test_y)),
            "num_classes": int(num_classes),
            "image_size": int(config.data.image_size),
            "reported": "top-1 / top-5 on the test split after the last epoch",
            "seed": int(probe.seed),
        },
    }
    result["result_file"] = common.result_file(RESULT_FILE, config, data_config)
    if write and jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, result["result_file"]), result)
    return result


__all__ = ["default_probe_config", "evaluate_classifier", "run_linear_probe",
           "train_linear_classifier", "validate_probe_config"]
