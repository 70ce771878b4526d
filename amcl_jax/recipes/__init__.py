"""The training recipes, one module per recipe (`get_config()` or `get_config(arg)`), by name.

`cifar10_<method>` (no AMCL) and `cifar10_amcl_<method>` hold each method's paper protocol:
heads, learning rate, temperature bounds, method fields. `method_config` returns them, so that
`reproduce` (and anything else that needs a method's settings) starts every row from the same
config that `python main.py --config=configs/cifar10_<...>.py` (a one-line file importing the
module here) or `python -m amcl_jax --config=cifar10_<...>` trains.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import ml_collections


def names() -> list[str]:
    """The packaged recipes' names (this package's modules), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def recipe_name(method: str, amcl: bool) -> str:
    """cifar10_<method>, or cifar10_amcl_<method> with AMCL."""
    return f"cifar10_{'amcl_' if amcl else ''}{method}"


def get_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` (or `get_config(arg)`) of the recipe `name`; ValueError listing the recipes
    when there is none of that name."""
    if name not in names():
        raise ValueError(f"no recipe named {name!r}; the recipes: {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.get_config() if arg is None else module.get_config(arg)


def load_python_file(path: str, prefix: str):
    """The module of a Python file given by path (a user's own config file or table spec);
    FileNotFoundError when it is not one."""
    module_name = prefix + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config()` (or `get_config(arg)`) of a config file, as `main.py --config=` reads it."""
    module = load_python_file(path, "amcl_config_")
    return module.get_config() if arg is None else module.get_config(arg)


def method_config(method: str, amcl: bool) -> ml_collections.ConfigDict:
    """The config of `method` with AMCL on or off, from its recipe (a fresh copy).

    Raises ValueError naming the recipe when the pair has none (BYOL has no AMCL form).
    """
    name = recipe_name(method, amcl)
    if name not in names():
        raise ValueError(f"method={method!r} with amcl={amcl} has no recipe "
                         f"(amcl_jax/recipes/{name}.py does not exist)")
    config = get_config(name)
    if config.method != method or bool(config.amcl.enabled) != amcl:
        raise ValueError(f"amcl_jax/recipes/{name}.py sets method={config.method!r}, "
                         f"amcl.enabled={config.amcl.enabled}, not {method!r}, {amcl}")
    return config


def cifar10_config(method: str) -> ml_collections.ConfigDict:
    """The default config for `method` (no AMCL) on CIFAR-10 at the base repository's schedule,
    which every `cifar10_<method>` recipe starts from: evaluated every 20 epochs and checkpointed
    every 10 (batch 512: 97.75 steps per epoch)."""
    from amcl_jax.config import get_default_config

    config = get_default_config()
    config.method = method
    config.amcl.enabled = False
    config.data.dataset = "cifar10"
    config.eval.every_steps = 1955
    config.checkpoint.every_steps = 977
    return config


def amcl_simclr_config(dataset: str, **data) -> ml_collections.ConfigDict:
    """AMCL-SimCLR with the default settings on `dataset`, which the recipes of other datasets
    start from; `data` sets other `config.data` fields (`train_split`, `download`, ...). The
    default splits: pretraining and the kNN bank on "train", queries on "test"."""
    from amcl_jax.config import get_default_config

    config = get_default_config()
    config.method = "simclr"
    config.amcl.enabled = True
    config.data.dataset = dataset
    for field, value in data.items():
        if field not in config.data:
            raise ValueError(f"config.data has no field {field!r}")
        config.data[field] = value
    return config
