"""amcl_jax.methods.vicreg: the method built from its config trains a finite step; its config
checks (no AMCL, no negative weights). Its loss: tests/losses/test_vicreg.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from amcl_jax import methods
from amcl_jax.config import ConfigError, validate_config
from amcl_jax.methods import common

WEIGHTS = {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0}


def _tiny_vicreg(**overrides):
    return tiny_config(**{"method": "vicreg", "amcl.enabled": False, "model.width": 0.0625,
                          "projector.num_layers": 3, "projector.hidden_dim": 16,
                          "projector.out_dim": 8, **overrides})


def test_vicreg_method_trains_one_finite_step_with_its_three_layer_projector():
    config = _tiny_vicreg()
    validate_config(config)
    method = methods.get_method("vicreg")
    assert not method.supports_amcl
    model = method.build_model(config)
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((2, 8, 8, 3)), train=False))(
        jax.random.key(0))
    heads = variables["params"]["projector"]["heads"]
    assert sorted(heads) == ["bn_0", "bn_1", "dense_0", "dense_1", "dense_2"]  # BN: hidden only.
    assert sorted(variables["batch_stats"]["projector"]["heads"]) == ["bn_0", "bn_1"]
    views = jax.random.uniform(jax.random.key(1), (2, 8, 8, 8, 3))

    def loss_fn(params):
        out = method.apply_loss(model, config, params, variables["batch_stats"], {}, views,
                                jax.random.key(2))
        return out.loss, out

    (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    assert np.isfinite(loss) and set(out.metrics) == {"invariance", "variance", "covariance"}
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads["encoder"]))
    assert common.num_heads(config) == 1


def test_vicreg_refuses_amcl_and_negative_weights_naming_the_field():
    with pytest.raises(ConfigError, match=r"^config\.amcl\.enabled=True is invalid") as error:
        validate_config(_tiny_vicreg(**{"amcl.enabled": True}))
    assert "\n" not in str(error.value)
    for weight in WEIGHTS:
        with pytest.raises(ConfigError, match=rf"config\.vicreg\.{weight}=-1"):
            validate_config(_tiny_vicreg(**{f"vicreg.{weight}": -1.0}))
