"""amcl_jax.methods.common: the MoCo queue, EMA targets and their momentum schedule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from amcl_jax import methods
from amcl_jax.config import validate_config
from amcl_jax.methods import common

# Every method with a momentum (EMA) network: those whose section sets a momentum schedule.
EMA_METHODS = [method.name for method in methods.registered()
               if "momentum_schedule" in method.config_sections().get(method.name, {})]


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


@pytest.mark.parametrize("name", EMA_METHODS)
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
