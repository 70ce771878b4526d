"""The authors' AMCL v2.0 form outside the losses (tests/losses/ checks those).

Eq. 3's pair-score map and Barlow Twins' channel-vector map against float64 NumPy loop
references, the forms' settings, their validation, clipping, and every method's step in the
authors' form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import (
    PAIR_SCORE_BOUNDS,
    channel_map,
    normals,
    np_pair_tau,
    np_unit,
    pair_score_temperature,
    reference_channel_temperatures,
)
from conftest import tiny_config

from amcl_jax import forms, methods, models, optim
from amcl_jax.config import ConfigError, get_default_config, get_field, validate_config


# ---------------------------------------------------------------------------------------------
# The temperature maps
# ---------------------------------------------------------------------------------------------
def test_pair_score_grid_and_gathered_equal_per_pair_evaluation():
    fn, weights = pair_score_temperature(num_heads=2, dim=5)
    u, v = np_unit(normals((2, 4, 5), 1)), np_unit(normals((2, 7, 5), 2))
    grid = np.asarray(fn.pair_grid(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)))
    expected = np.array([[[np_pair_tau(weights, u[c, a], v[c, b]) for b in range(7)]
                          for a in range(4)] for c in range(2)])
    np.testing.assert_allclose(grid, expected, rtol=1e-5)
    index = np.array(jax.random.randint(jax.random.key(3), (2, 4, 3), 0, 7))
    gathered = fn.gathered(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), index)
    np.testing.assert_allclose(gathered, np.take_along_axis(expected, index, axis=-1), rtol=1e-5)
    pairs = fn(jnp.asarray(u, jnp.float32), jnp.asarray(v[:, :4], jnp.float32))
    np.testing.assert_allclose(pairs, np.diagonal(expected[:, :, :4], axis1=1, axis2=2),
                               rtol=1e-5)
    # Symmetric in (u, v); a higher score gives a lower temperature, inside the bounds.
    np.testing.assert_allclose(fn.pair_grid(jnp.asarray(v, jnp.float32),
                                            jnp.asarray(u, jnp.float32)),
                               np.swapaxes(expected, 1, 2), rtol=1e-5)
    assert PAIR_SCORE_BOUNDS[0] <= grid.min() and grid.max() <= PAIR_SCORE_BOUNDS[1]


def test_pair_score_is_one_network_for_all_heads_unless_asked_otherwise():
    z = jnp.zeros((3, 2, 4))
    shared = models.PairScoreTemperature(num_heads=3, hidden_dim=5).init(jax.random.key(0), z, z)
    per_head = models.PairScoreTemperature(num_heads=3, hidden_dim=5, shared=False).init(
        jax.random.key(0), z, z)
    assert shared["params"]["phi"]["dense_0"]["kernel"].shape == (4, 5)
    assert per_head["params"]["phi"]["dense_0"]["kernel"].shape == (3, 4, 5)


def test_channel_map_temperatures_match_the_numpy_loop():
    module, params, weights = channel_map(num_heads=2, batch=6)
    z_a, z_b = normals((2, 6, 4), 25), normals((2, 6, 4), 26)
    tau_diag, tau_off = module.apply({"params": params}, z_a, z_b)
    expected = reference_channel_temperatures(weights, z_a, z_b)
    np.testing.assert_allclose(tau_off, expected, rtol=1e-5)
    np.testing.assert_allclose(tau_diag, np.diagonal(expected, axis1=1, axis2=2), rtol=1e-5)
    # phi's size is the batch: another batch size is refused with the field named.
    with pytest.raises(ValueError, match="batch_size=6"):
        module.apply({"params": params}, z_a[:, :4], z_b[:, :4])


# ---------------------------------------------------------------------------------------------
# Forms, config and optimizer
# ---------------------------------------------------------------------------------------------
def _resolved(config, field):
    """`field` as a run resolves it."""
    return get_field(forms.resolve(config), field)


def test_each_form_fills_its_settings_and_each_field_overrides_it_alone():
    config = get_default_config()
    assert forms.form(config) == "project"  # The default, by measurement (docs/amcl.md).
    assert _resolved(config, "amcl.negatives") == "logsumexp"
    assert _resolved(config, "amcl.temperature_net") == "concat_mlp"
    config.amcl.form = "authors"
    assert _resolved(config, "amcl.negatives") == "topk"
    assert _resolved(config, "amcl.temperature_net") == "pair_score"
    assert _resolved(config, "amcl.beta") == 1e-4
    assert _resolved(config, "amcl.omega_dim") == config.projector.out_dim
    assert _resolved(config, "optimizer.grad_clip_norm") == 1.0
    config.method = "barlow_twins"
    assert _resolved(config, "amcl.beta") == 1e-6
    assert _resolved(config, "barlow_twins.temperatures") == "channel_map"
    config.amcl.form = "project"
    assert _resolved(config, "amcl.beta") == 0.1
    assert _resolved(config, "amcl.temperature_bounds") == (0.5, 2.0)
    assert _resolved(config, "amcl.omega_dim") == 1
    assert _resolved(config, "optimizer.grad_clip_norm") == 0.0
    config.amcl.beta = 0.3  # One field set: the rest of the form stays.
    assert _resolved(config, "amcl.beta") == 0.3
    assert _resolved(config, "amcl.negatives") == "logsumexp"
    config.amcl.enabled = False  # Baselines are not clipped unless asked.
    config.amcl.form = "authors"
    assert _resolved(config, "optimizer.grad_clip_norm") == 0.0


def test_an_old_workdir_config_resolves_to_what_it_ran():
    """config.json files written before the forms hold explicit values and no amcl.form."""
    config = get_default_config()
    del config.amcl["form"]
    config.method = "barlow_twins"
    config.amcl.omega_dim = -1  # The old spelling of "Omega's K by the method's rule".
    assert _resolved(config, "amcl.omega_dim") == 1
    assert forms.form(config) == "project"


@pytest.mark.parametrize("field,value,match", [
    ("amcl.form", "paper", "amcl.form"),
    ("amcl.negatives", "softmax", "amcl.negatives"),
    ("amcl.temperature_net", "mlp", "amcl.temperature_net"),
    ("amcl.topk", 0, "amcl.topk"),
    ("amcl.beta", -1.0, "amcl.beta"),
    ("optimizer.grad_clip_norm", -1.0, "optimizer.grad_clip_norm"),
    ("barlow_twins.temperatures", "free", "barlow_twins.temperatures"),
    ("moco.directions", "both", "moco.directions"),
])
def test_form_fields_are_validated_by_name(field, value, match):
    config = get_default_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_moco_queue_needs_only_the_keys_of_one_view_in_the_authors_form():
    config = get_default_config()
    config.amcl.form = "authors"
    config.method = "moco"
    config.batch_size = 64
    config.moco.queue_size = 64
    validate_config(config)
    config.amcl.form = "project"
    with pytest.raises(ConfigError, match="moco.queue_size"):
        validate_config(config)


def test_clipping_scales_the_loss_gradient_before_weight_decay():
    config = get_default_config()
    config.amcl.form = "authors"  # Clipping at 1.0 comes with it.
    config.optimizer.learning_rate = 1.0
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.5
    config.optimizer.schedule = "constant"
    params = {"w": jnp.full((4,), 2.0)}
    grads = {"w": jnp.full((4,), 3.0)}  # Norm 6: clipped to 1.
    tx, _ = optim.build_optimizer(forms.resolve(config), total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -(3.0 / 6.0 + 0.5 * 2.0), rtol=1e-6)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(0.5),
                            optax.sgd(1.0))
    expected, _ = reference.update(grads, reference.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
    config.optimizer.grad_clip_norm = 0.0
    tx, _ = optim.build_optimizer(config, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -(3.0 + 0.5 * 2.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Methods in the authors' form: a step's loss through the real model
# ---------------------------------------------------------------------------------------------
AMCL_METHODS = [method.name for method in methods.registered() if method.supports_amcl]


def _tiny(method, **overrides):
    return tiny_config(**{"method": method, "amcl.form": "authors", "model.width": 0.0625,
                          "predictor.hidden_dim": 8, "moco.queue_size": 16, **overrides})


def _loss_and_grads(config, then=None):
    """One step's loss through the real model: (initial variables, loss, output, gradient), and
    `then(params, gradient)` in the same compiled program where given (appended)."""
    validate_config(config)
    config = forms.resolve(config)
    impl = methods.get_method(config.method)
    model = impl.build_model(config)
    # Jitted: the model's init and the step dispatched op by op take far longer than compiling.
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((2, 8, 8, 3)), train=False))(
        jax.random.key(0))
    extra = impl.init_extra(config, variables, jax.random.key(1))
    views = jax.random.normal(jax.random.key(2), (2, 8, 8, 8, 3))

    def loss_fn(params):
        out = impl.apply_loss(model, config, params, variables["batch_stats"], extra, views,
                              jax.random.key(3))
        return out.loss, out

    def step(params):
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return (loss, out, grads) + (() if then is None else (then(params, grads),))

    return variables, *jax.jit(step)(variables["params"])


@pytest.mark.parametrize("method", AMCL_METHODS)
def test_every_method_computes_a_finite_loss_in_the_authors_form(method):
    _, loss, out, grads = _loss_and_grads(_tiny(method))
    assert np.isfinite(loss)
    temperature_grads = jax.tree.leaves(grads["temperature_net"])
    assert temperature_grads and all(np.all(np.isfinite(g)) for g in temperature_grads)
    assert np.all(np.asarray(out.metrics["tau_pos_min"]) >= PAIR_SCORE_BOUNDS[0])
    if method == "moco":  # The authors' MoCo enqueues the N keys of the second view.
        assert int(out.extra["queue_ptr"]) == 8


def test_each_recipe_names_the_form_measured_best_for_its_method():
    """docs/amcl.md: the project's form by default; MoCo's and Barlow Twins' recipes take the
    authors' form."""
    from amcl_jax import recipes

    authors = {"moco", "barlow_twins"}
    for method in AMCL_METHODS:
        config = recipes.method_config(method, True)
        validate_config(config)
        assert forms.form(config) == ("authors" if method in authors else "project"), method


@pytest.mark.parametrize("method", AMCL_METHODS)
def test_a_baseline_is_the_same_run_in_either_form(method):
    """With AMCL off, amcl.form changes nothing: same parameters, loss, gradient, extra state and
    optimizer update (so a baseline run resumes under either spelling of the form)."""
    results = []
    for form in forms.FORMS:
        config = _tiny(method, **{"amcl.enabled": False, "amcl.form": form})
        tx, _ = optim.build_optimizer(forms.resolve(config), total_steps=10)

        def update(params, grads, tx=tx):
            grads = jax.tree.map(lambda g: g * 1e3, grads)  # Large enough that clipping shows.
            return grads, tx.update(grads, tx.init(params), params)[0]

        variables, loss, out, _, (grads, updates) = _loss_and_grads(config, then=update)
        results.append((variables["params"], loss, grads, out.extra, updates))
    assert "temperature_net" not in results[0][0]
    for other in results[1:]:
        for left, right in zip(results[0], other, strict=True):
            jax.tree.map(np.testing.assert_array_equal, left, right)
