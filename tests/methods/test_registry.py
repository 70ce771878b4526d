"""amcl_jax.methods (the registry): every registered method's recipes, quickstart configs and
config sections; BYOL refuses AMCL."""

import os
import sys

import pytest
from conftest import tiny_config

from amcl_jax import methods, recipes
from amcl_jax.config import ConfigError, get_default_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def test_every_registered_method_has_its_recipes_and_sections():
    config = get_default_config()
    for method in methods.registered():
        assert methods.get_method(method.name).name == method.name
        assert recipes.recipe_name(method.name, False) in recipes.names()
        assert (recipes.recipe_name(method.name, True) in recipes.names()) == method.supports_amcl
        assert all(section in config for section in method.config_sections())
