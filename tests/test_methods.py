"""MoCo, SimSiam, Barlow Twins and BYOL: losses against float64 NumPy loops, the MoCo queue, EMA
targets, the configs, and every method variant end to end on mock data."""

import json
import os
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from _helpers import (
    MLPTemperature,
    make_mlp_params,
    np_omega,
    np_params,
    np_tau,
    np_unit,
)
from conftest import tiny_config

from amcl_jax import losses, methods, models, recipes, train
from amcl_jax.config import ConfigError, get_default_config, validate_config
from amcl_jax.methods import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, N, D, K = 2, 3, 4, 5
BETA, OMEGA_DIM = 0.3, 4.0


def _call(fn, *args, **kwargs):
    """fn(*args, **kwargs) under one jit (one compile beats op-by-op dispatch); the array
    arguments are traced, the others (temperature functions, floats) closed over."""
    is_array = [isinstance(a, jax.Array) for a in args]
    arrays = [a for a, flag in zip(args, is_array, strict=True) if flag]

    def call(*traced):
        it = iter(traced)
        return fn(*[next(it) if flag else a for a, flag in zip(args, is_array, strict=True)],
                  **kwargs)

    return jax.jit(call)(*arrays)


def _randn(seed, *shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope="module")
def tau_setup():
    params = make_mlp_params(jax.random.key(7), C, D)
    return MLPTemperature(params), np_params(params)


# ---------------------------------------------------------------------------------------------
# MoCo
# ---------------------------------------------------------------------------------------------
def ref_moco(q, k, queue, temperature):
    total = 0.0
    for i in range(len(q)):
        u = np_unit(q[i])
        logits = [u @ np_unit(k[i]) / temperature] + [u @ np_unit(x) / temperature
                                                      for x in queue]
        total += np.log(np.sum(np.exp(logits))) - logits[0]
    return total / len(q)


def test_moco_infonce_matches_loop():
    q, k, queue = _randn(0, N, D), _randn(1, N, D), _randn(2, K, D)
    loss, metrics = _call(losses.moco_infonce, q, k, queue, 0.1)
    np.testing.assert_allclose(loss, ref_moco(np.asarray(q), np.asarray(k), np.asarray(queue),
                                              0.1), rtol=1e-5)
    assert set(metrics) == {"pos_sim", "neg_sim", "hard_neg_sim"}


def ref_amcl_queue(q, k, queue, tau_np, negatives, infonce):
    total = 0.0
    for c in range(q.shape[0]):
        for i in range(q.shape[1]):
            u, pos = np_unit(q[c, i]), np_unit(k[c, i])
            bank = [np_unit(x) for x in queue[c]]
            s_pos, tau_pos = u @ pos, np_tau(tau_np, c, u, pos)
            cos = np.array([u @ x for x in bank])
            taus = np.array([np_tau(tau_np, c, u, x) for x in bank])
            if negatives == "max":
                n_star = int(np.argmax(cos))
                s_max, tau_max = cos[n_star], taus[n_star]
                if infonce and s_pos >= s_max:
                    s_max, tau_max = s_pos, tau_pos
                term = -s_pos / tau_pos + s_max / tau_max - BETA * np_omega(tau_max, OMEGA_DIM)
            else:
                logits = np.concatenate([[s_pos / tau_pos], cos / taus])
                weights = np.exp(cos / taus) / np.sum(np.exp(cos / taus))
                term = (-s_pos / tau_pos + np.log(np.sum(np.exp(logits)))
                        - BETA * np.sum(weights * np_omega(taus, OMEGA_DIM)))
            total += term + BETA * np_omega(tau_pos, OMEGA_DIM)
    return total / q.shape[1]


@pytest.mark.parametrize("negatives,infonce",
                         [("max", False), ("max", True), ("logsumexp", False)])
def test_amcl_queue_contrastive_matches_loop(tau_setup, negatives, infonce):
    tau_fn, tau_np = tau_setup
    q, k, queue = _randn(3, C, N, D), _randn(4, C, N, D), _randn(5, C, K, D)
    k = k.at[0, 0].set(q[0, 0])  # One positive certainly beats every negative (Eq. 2.4 branch).
    loss, metrics = _call(
        losses.amcl_queue_contrastive, q, k, queue, tau_fn, beta=BETA, omega_dim=OMEGA_DIM,
        negatives=negatives, infonce=infonce, chunk_size=2)  # 2 does not divide N = 3: padding.
    expected = ref_amcl_queue(*(np.asarray(x, np.float64) for x in (q, k, queue)), tau_np,
                              negatives, infonce)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert metrics["tau_pos_mean"].shape == (C,)


def test_amcl_moco_reduces_to_moco():
    q, k, queue = _randn(6, 1, N, D), _randn(7, 1, N, D), _randn(8, 1, K, D)
    loss, _ = _call(losses.amcl_queue_contrastive, q, k, queue, losses.constant_temperature(0.1),
                    beta=0.0, omega_dim=D, negatives="logsumexp")
    expected, _ = _call(losses.moco_infonce, q[0], k[0], queue[0], 0.1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_amcl_infonce_max_matches_loop_and_is_bounded(tau_setup):
    tau_fn, tau_np = tau_setup
    z_a, z_b = _randn(9, C, N, D), _randn(10, C, N, D)
    z_b = z_b.at[1, 2].set(z_a[1, 2])
    loss, _ = _call(losses.amcl_infonce_max, z_a, z_b, tau_fn, beta=BETA, omega_dim=OMEGA_DIM)
    a, b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    total = 0.0
    for c in range(C):
        views = [np_unit(x) for x in list(a[c]) + list(b[c])]
        for i in range(2 * N):
            pos = (i + N) % (2 * N)
            cands = [j for j in range(2 * N) if j != i]  # Negatives and the positive.
            sims = [views[i] @ views[j] for j in cands]
            best = max(range(len(cands)), key=lambda idx: (sims[idx], cands[idx] == pos))
            j = cands[best]
            tau_pos, tau_max = (np_tau(tau_np, c, views[i], views[x]) for x in (pos, j))
            total += (-views[i] @ views[pos] / tau_pos + sims[best] / tau_max
                      + BETA * np_omega(tau_pos, OMEGA_DIM) - BETA * np_omega(tau_max, OMEGA_DIM))
    np.testing.assert_allclose(loss, total / (2 * N), rtol=1e-4)
    # Identical views: the positive wins every max, so the loss is 0 even at a tiny temperature.
    zero, _ = _call(losses.amcl_infonce_max, z_a, z_a, losses.constant_temperature(1e-5),
                    beta=BETA, omega_dim=OMEGA_DIM)
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)


def test_enqueue_is_fifo_across_wrap_around():
    queue, ptr = jnp.zeros((2, 5, 1)), jnp.zeros((), jnp.int32)
    batches = [jnp.full((2, 2, 1), float(step)) for step in (1, 2, 3, 4)]
    contents = []
    for keys in batches:
        queue, ptr = common.enqueue(queue, ptr, keys)
        contents.append((np.asarray(queue[0, :, 0]).tolist(), int(ptr)))
    assert contents == [([1, 1, 0, 0, 0], 2), ([1, 1, 2, 2, 0], 4), ([3, 1, 2, 2, 3], 1),
                        ([3, 4, 4, 2, 3], 3)]
    np.testing.assert_array_equal(queue[0], queue[1])
    with pytest.raises(ValueError):
        common.enqueue(queue, ptr, jnp.zeros((2, 6, 1)))


def test_ema_update_and_cosine_ramp():
    target = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    online = {"w": jnp.array([3.0, 0.0]), "b": jnp.array(1.0)}
    moved = common.ema_update(target, online, 0.75)
    np.testing.assert_allclose(moved["w"], [1.5, 1.5])
    np.testing.assert_allclose(moved["b"], 2.5)
    assert float(common.ema_momentum(0.99, "constant", 50, 100)) == pytest.approx(0.99)
    ramp = [float(common.ema_momentum(0.99, "cosine", s, 100)) for s in (0, 50, 100)]
    np.testing.assert_allclose(ramp, [0.99, 0.995, 1.0], rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.5, 0.9, 0.99, 0.996, 0.99999])
def test_ema_update_gives_the_bits_of_its_formula(momentum):
    """optax's Polyak average (step 1 - m) against m * target + (1 - m) * online, in float32,
    under jit as in the train step, with the momentum traced as the cosine ramp makes it."""
    keys = jax.random.split(jax.random.key(0), 4)
    target = {"w": jax.random.normal(keys[0], (64, 8)), "b": jax.random.normal(keys[1], (8,))}
    online = {"w": jax.random.normal(keys[2], (64, 8)), "b": jax.random.normal(keys[3], (8,))}
    formula = lambda t, o, m: jax.tree.map(lambda a, b: m * a + (1.0 - m) * b, t, o)
    m = jnp.float32(momentum)
    moved = jax.jit(common.ema_update)(target, online, m)
    chex.assert_trees_all_equal_shapes_and_dtypes(moved, target)
    chex.assert_trees_all_equal(moved, jax.jit(formula)(target, online, m))


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_momentum_ramp_uses_the_run_length_when_set_by_epochs(name):
    """update_extra gets the resolved run length: with total_steps = -1 (num_epochs) the cosine
    ramp at step 5 of 10 is halfway, m = 1 - (1 - 0.9) / 2."""
    config = tiny_config(**{"method": name, "amcl.enabled": False})
    config.total_steps, config.num_epochs = -1, 3
    config[name].momentum, config[name].momentum_schedule = 0.9, "cosine"
    validate_config(config)
    params = {"encoder": {"w": jnp.ones(2)}, "projector": {"w": jnp.ones(2)}}
    extra = {"target_params": {"encoder": {"w": jnp.zeros(2)}, "projector": {"w": jnp.zeros(2)}}}
    out = methods.get_method(name).update_extra(config, params, extra, jnp.int32(5), 10)
    np.testing.assert_allclose(out["target_params"]["encoder"]["w"], [0.05, 0.05], rtol=1e-6)
    end = methods.get_method(name).update_extra(config, params, extra, jnp.int32(10), 10)
    np.testing.assert_allclose(end["target_params"]["projector"]["w"], [0.0, 0.0], atol=1e-7)


# ---------------------------------------------------------------------------------------------
# SimSiam / BYOL
# ---------------------------------------------------------------------------------------------
def test_symmetric_negative_cosine_matches_loop_and_stops_gradient():
    p_a, p_b, z_a, z_b = (_randn(s, N, D) for s in (11, 12, 13, 14))
    loss, _ = _call(losses.symmetric_negative_cosine, p_a, p_b, z_a, z_b)
    cos = lambda x, y: np_unit(x) @ np_unit(y)
    ref = -np.mean([0.5 * (cos(p_a[i], z_b[i]) + cos(p_b[i], z_a[i])) for i in range(N)])
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    grads = jax.grad(lambda z: losses.symmetric_negative_cosine(p_a, p_b, z, z_b)[0])(z_a)
    np.testing.assert_array_equal(grads, 0.0)


def test_amcl_simsiam_matches_loop_and_reduces(tau_setup):
    tau_fn, tau_np = tau_setup
    p_a, p_b, z_a, z_b = (_randn(s, C, N, D) for s in (15, 16, 17, 18))
    loss, metrics = _call(losses.amcl_simsiam, p_a, p_b, z_a, z_b, tau_fn, beta=BETA,
                          omega_dim=OMEGA_DIM)
    total = 0.0
    for c in range(C):
        for i in range(N):
            pa, pb, za, zb = (np_unit(np.asarray(x[c, i], np.float64))
                              for x in (p_a, p_b, z_a, z_b))
            t_plus, t_tilde = np_tau(tau_np, c, pa, zb), np_tau(tau_np, c, pb, za)
            total += (-(pa @ zb) / (2 * t_plus) - (pb @ za) / (2 * t_tilde)
                      + BETA * np_omega(t_plus, OMEGA_DIM) + BETA * np_omega(t_tilde, OMEGA_DIM))
    np.testing.assert_allclose(loss, total / N, rtol=1e-4)
    assert metrics["tau_pos_mean"].shape == (C,)
    one, _ = _call(losses.amcl_simsiam, p_a[:1], p_b[:1], z_a[:1], z_b[:1],
                   losses.constant_temperature(1.0), beta=0.0, omega_dim=D)
    base, _ = _call(losses.symmetric_negative_cosine, p_a[0], p_b[0], z_a[0], z_b[0])
    np.testing.assert_allclose(one, base, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Barlow Twins
# ---------------------------------------------------------------------------------------------
def ref_corr(z_a, z_b, eps=1e-5):
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    num, dim = z_a.shape
    std = lambda z, col: np.sqrt(sum((z[n, col] - z[:, col].mean()) ** 2 for n in range(num))
                                 / (num - 1) + eps)
    corr = np.zeros((dim, dim))
    for row in range(dim):
        for m in range(dim):
            corr[row, m] = sum((z_a[n, row] - z_a[:, row].mean()) / std(z_a, row)
                               * (z_b[n, m] - z_b[:, m].mean()) / std(z_b, m)
                               for n in range(num)) / num
    return corr


def test_barlow_twins_matches_loop():
    z_a, z_b = _randn(19, N + 2, D), _randn(20, N + 2, D)
    loss, _ = _call(losses.barlow_twins_loss, z_a, z_b, off_diagonal_weight=0.2)
    corr = ref_corr(z_a, z_b)
    ref = sum((1 - corr[row, row]) ** 2 for row in range(D)) + 0.2 * sum(
        corr[row, m] ** 2 for row in range(D) for m in range(D) if row != m)
    np.testing.assert_allclose(loss, ref, rtol=1e-4)


def test_amcl_barlow_twins_matches_loop_and_reduces():
    z_a, z_b = _randn(21, C, N + 2, D), _randn(22, C, N + 2, D)
    tau_diag = 0.5 + jax.nn.sigmoid(_randn(23, C, D))
    tau_off = 0.5 + jax.nn.sigmoid(_randn(24, C, D, D))
    loss, metrics = _call(losses.amcl_barlow_twins, z_a, z_b, tau_diag, tau_off,
                          off_diagonal_weight=0.2, beta=BETA, omega_dim=1.0)
    td, to = np.asarray(tau_diag, np.float64), np.asarray(tau_off, np.float64)
    total = 0.0
    for c in range(C):
        corr = ref_corr(z_a[c], z_b[c])
        for row in range(D):
            total += (1 - corr[row, row] / td[c, row]) ** 2 + BETA * np_omega(td[c, row], 1.0)
            for m in range(D):
                if m != row:
                    tau = to[c, row, m]
                    total += 0.2 * corr[row, m] ** 2 / tau - BETA * np_omega(tau, 1.0)
    np.testing.assert_allclose(loss, total, rtol=1e-4)
    assert metrics["tau_neg_mean"].shape == (C,)
    one, _ = _call(losses.amcl_barlow_twins, z_a[:1], z_b[:1], jnp.ones((1, D)),
                   jnp.ones((1, D, D)), off_diagonal_weight=0.2, beta=0.0, omega_dim=1.0)
    base, _ = _call(losses.barlow_twins_loss, z_a[0], z_b[0], off_diagonal_weight=0.2)
    np.testing.assert_allclose(one, base, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
def _import_config(name):
    sys.path.insert(0, ROOT)
    import importlib

    return importlib.import_module(f"configs.{name}")


@pytest.mark.parametrize("method", methods.registered(), ids=lambda m: m.name)
def test_cifar10_configs_and_quickstart_validate(method):
    lrs = {"moco": 0.08, "barlow_twins": 0.11, "simsiam": 0.05, "byol": 0.05}
    amcl_values = (False, True) if method.supports_amcl else (False,)
    for amcl in amcl_values:
        name = recipes.recipe_name(method.name, amcl)
        config = _import_config(name).get_config()
        validate_config(config)
        assert config.method == method.name and config.amcl.enabled == amcl
        if method.name in lrs:
            assert config.optimizer.learning_rate == lrs[method.name]
    quickstart = _import_config("quickstart")
    for amcl in amcl_values:
        config = quickstart.get_config(f"method={method.name},amcl={str(amcl).lower()}")
        validate_config(config)
        assert config.method == method.name and config.amcl.enabled == amcl
    assert method.supports_amcl or not quickstart.get_config(f"method={method.name}").amcl.enabled


def test_byol_with_amcl_is_refused():
    with pytest.raises(ConfigError, match="amcl.enabled"):
        validate_config(tiny_config(method="byol"))


# ---------------------------------------------------------------------------------------------
# End to end: every variant (method x AMCL on/off), 3 steps on mock CIFAR-10.
# ---------------------------------------------------------------------------------------------
VARIANTS = [(method.name, amcl) for method in methods.registered()
            for amcl in ((False, True) if method.supports_amcl else (False,))]


class TinyEncoder(nn.Module):
    """Conv - BatchNorm - ReLU - mean pool: (B, H, W, 3) -> (B, 16). Compiles in a blink, and has
    BatchNorm statistics for the momentum networks to carry. (Backbones: test_backbones.py.)"""

    width: float = 1.0
    stem: str = "cifar"
    dtype: object = jnp.float32
    conv: object = None

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(16, (3, 3), strides=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return jnp.mean(x, axis=(1, 2))


@pytest.fixture
def tiny_encoder(monkeypatch):
    monkeypatch.setitem(models.ENCODERS, "test_tiny", (TinyEncoder, lambda width: 16))


def _e2e_config(method, amcl):
    # Identical views (no augmentation) so that 3 steps' loss trend is not drowned by
    # augmentation noise; Barlow Twins gets crops, as identical views start it at C_ll = 1.
    # MoCo: a queue of exactly one step's 2N = 16 keys (it wraps around every step) and a faster
    # momentum, so its keys keep up with the queries within 3 steps.
    config = tiny_config(**{
        "model.name": "test_tiny", "method": method, "amcl.enabled": amcl,
        "total_steps": 3, "log_every_steps": 1, "eval.every_steps": 3,
        "checkpoint.every_steps": 3, "data.augmentations": "a" if method == "barlow_twins" else "",
        "data.allow_no_augmentation": True,
        "moco.queue_size": 16, "moco.momentum": 0.9, "predictor.hidden_dim": 8,
        "amcl.temperature_bounds": (0.5, 2.0),
    })
    if method == "barlow_twins":
        config.projector.num_layers = 3
    if method == "vicreg":  # Weights 25 / 25 / 1: at SGD's 0.05 its output scale overshoots and
        config.optimizer.learning_rate = 0.01  # the covariance term grows by the third step.
    return config


@pytest.mark.parametrize("method,amcl", VARIANTS)
def test_every_variant_trains_end_to_end(tmp_path, tiny_encoder, method, amcl):
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=24):
        summary = train.train_and_evaluate(_e2e_config(method, amcl), workdir)
    assert summary["method"] == method and summary["amcl"] is amcl and summary["steps"] == 3
    on_disk = json.load(open(os.path.join(workdir, "summary.json")))
    assert on_disk["method"] == method and on_disk["amcl"] is amcl
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        loss = [json.loads(line)["loss"] for line in f]
    assert len(loss) == 3 and np.all(np.isfinite(loss))
    # Decreasing over the steps. MoCo's first step is against the random initial queue (an easy,
    # lower loss), so its trend starts at step 2, once the queue holds real keys.
    first = 1 if method == "moco" else 0
    assert loss[-1] < loss[first], loss

    if method in ("moco", "byol"):
        # The momentum network (and the queue) are in the checkpoint, and moved as they should.
        state = ocp.StandardCheckpointer().restore(
            os.path.join(workdir, "checkpoints", "3", "state"))
        extra, params = state["extra"], state["params"]
        assert set(extra) >= {"target_params", "target_batch_stats"}
        assert jax.tree.structure(extra["target_batch_stats"]) == jax.tree.structure(
            {k: v for k, v in state["batch_stats"].items() if k in ("encoder", "projector")})
        online = jax.tree.leaves(params["projector"])
        target = jax.tree.leaves(extra["target_params"]["projector"])
        assert any(not np.allclose(o, t) for o, t in zip(online, target, strict=True))
        if method == "moco":
            # 3 steps x 2N = 16 keys into a queue of 16: full, and the pointer back at 0.
            assert extra["queue"].shape == (3 if amcl else 1, 16, 8)
            assert int(extra["queue_ptr"]) == 0
            np.testing.assert_allclose(np.linalg.norm(extra["queue"], axis=-1), 1.0, rtol=1e-5)


def test_every_registered_method_has_its_recipes_and_sections():
    config = get_default_config()
    for method in methods.registered():
        assert methods.get_method(method.name).name == method.name
        assert recipes.recipe_name(method.name, False) in recipes.names()
        assert (recipes.recipe_name(method.name, True) in recipes.names()) == method.supports_amcl
        assert all(section in config for section in method.config_sections())
