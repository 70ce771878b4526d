"""Each method's own settings, from one place: the config files in `configs/`.

`configs/cifar10_<method>.py` (no AMCL) and `configs/cifar10_amcl_<method>.py` hold each method's
paper protocol: heads, learning rate, temperature bounds, method fields. `method_config` loads
them, so that `reproduce` (and anything else that needs a method's settings) starts every row from
the same config that `python main.py --config=configs/cifar10_<...>.py` trains.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_path(method: str, amcl: bool) -> str:
    """configs/cifar10_<method>.py, or configs/cifar10_amcl_<method>.py with AMCL."""
    name = f"cifar10_{'amcl_' if amcl else ''}{method}.py"
    return os.path.join(CONFIG_DIR, name)


def load_python_file(path: str, prefix: str):
    """The module of a Python file given by path (config files and table specs are not a
    package); FileNotFoundError when it is not one."""
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
    """The config of `method` with AMCL on or off, from its file in `configs/` (a fresh copy).

    Raises ValueError naming the file when the pair has none (BYOL has no AMCL form).
    """
    path = config_path(method, amcl)
    if not os.path.exists(path):
        raise ValueError(f"method={method!r} with amcl={amcl} has no config "
                         f"(configs/{os.path.basename(path)} does not exist)")
    config = load_config_file(path)
    if config.method != method or bool(config.amcl.enabled) != amcl:
        raise ValueError(f"configs/{os.path.basename(path)} sets method={config.method!r}, "
                         f"amcl.enabled={config.amcl.enabled}, not {method!r}, {amcl}")
    return config
