"""Invalid config values fail at start-up with one line naming the field."""

import json
import os
import sys

import _runs
import ml_collections
import pytest
from conftest import set_field

from amcl_jax.config import ConfigError, get_default_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD_VALUES = [
    ("method", "simclrr"),
    ("model.name", "resnet19"),
    ("model.stem", "tiny"),
    ("model.xla_cpu_ynnpack", "eigen"),
    ("model.dtype", "float16"),
    ("model.batch_norm_groups", 0),
    ("model.batch_norm_groups", -2),
    ("model.batch_norm_groups", 3),  # Does not divide the default batch_size.
    ("optimizer.name", "adamw"),
    ("amcl.negatives", "min"),
    ("amcl.loss", "other"),
    ("amcl.adaptive_temperature", "sometimes"),
    ("amcl.num_heads", 0),
    ("amcl.beta", -0.1),
    ("amcl.temperature_bounds", (0.0, 1.0)),
    ("amcl.temperature_bounds", (2.0, 1.0)),
    ("batch_size", 0),
    ("total_steps", -5),
    ("optimizer.learning_rate", -1.0),
    ("data.augmentations", "abz"),
    ("data.augmentations", "aab"),
    ("eval.knn_k", 0),
    ("simclr.temperature", 0.0),
    ("amcl.temperature_objective", "both"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_value_names_the_field(field, value):
    config = get_default_config()
    set_field(config, field, value)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert f"config.{field}=" in message and "\n" not in message


def test_the_tests_encoder_is_accepted_but_not_offered():
    config = get_default_config()
    config.model.name = "_resnet_test"
    validate_config(config)
    config.model.name = "resnet19"
    with pytest.raises(ConfigError, match="'resnet18'") as error:
        validate_config(config)
    assert "_resnet_test" not in str(error.value)


def test_default_and_quickstart_configs_are_valid():
    validate_config(get_default_config())
    sys.path.insert(0, ROOT)
    from configs import quickstart
    validate_config(quickstart.get_config(""))
    validate_config(quickstart.get_config("method=simclr,amcl=false"))


def test_batch_not_divisible_by_devices():
    config = get_default_config()
    config.batch_size = 12
    with pytest.raises(ConfigError, match="divisible by the number of devices"):
        validate_config(config, num_devices=8)


def test_missing_data_dir_without_download(tmp_path):
    config = get_default_config()
    config.data.download = False
    config.data.data_dir = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match="config.data.data_dir=.*does not exist"):
        validate_config(config)


def _run_main(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return _runs.run_script([sys.executable, "main.py", *args], env, 300)


def test_main_prints_one_line_and_no_traceback(tmp_path):
    result = _run_main("--config=configs/quickstart.py", "--config.amcl.negatives=soft",
                       f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "config.amcl.negatives='soft'" in lines[0]
    assert "'max', 'logsumexp'" in lines[0]


def test_main_rejects_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _run_main("--config=configs/quickstart.py", f"--workdir={blocker}/sub")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--workdir" in result.stderr


def test_temperature_ablation_is_refused_where_the_loss_has_no_such_split():
    config = get_default_config()
    config.method, config.amcl.adaptive_temperature = "moco", "positive"
    with pytest.raises(ConfigError, match="config.amcl.adaptive_temperature='positive'"):
        validate_config(config)
    config.method = "simclr"
    validate_config(config)


def test_the_likelihood_form_is_simclrs_with_the_log_sum_exp_only():
    config = get_default_config()
    config.amcl.form = "likelihood"
    validate_config(config)
    config.amcl.negatives = "topk"
    with pytest.raises(ConfigError, match="config.amcl.temperature_objective='row_likelihood' "
                       "is invalid: needs amcl.negatives='logsumexp', not 'topk'"):
        validate_config(config)
    config.amcl.negatives, config.amcl.adaptive_temperature = None, "positive"
    with pytest.raises(ConfigError, match="amcl.adaptive_temperature='both'"):
        validate_config(config)
    config.amcl.adaptive_temperature = "both"
    for method in ("moco", "simsiam", "barlow_twins"):
        config.method = method
        with pytest.raises(ConfigError, match=f"SimCLR's only \\(method '{method}'\\)"):
            validate_config(config)
    config.amcl.enabled = False  # A baseline: the form's temperatures are not used.
    validate_config(config)


def test_xla_cpu_ynnpack_settings_and_configs_written_before_the_field():
    from amcl_jax import program
    from amcl_jax.platform import cpu

    config = get_default_config()
    assert config.model.xla_cpu_ynnpack == cpu.DEFAULT_XLA_CPU_YNNPACK
    assert program.compiler_options(config) == cpu.xla_compiler_options(
        config.model.xla_cpu_ynnpack)
    old = ml_collections.ConfigDict(json.loads(config.to_json()))
    del old.model["xla_cpu_ynnpack"]
    assert "xla_cpu_ynnpack" not in old.model
    assert program.compiler_options(old) == program.compiler_options(config)
    config.model.xla_cpu_ynnpack = "jaxlib"
    assert program.compiler_options(config) is None


def test_cpu_fusion_barriers_reach_the_resnet_and_old_configs_get_them():
    from amcl_jax.methods import common

    config = get_default_config()
    assert config.model.cpu_fusion_barriers is True
    assert common.build_encoder(config).cpu_fusion_barriers is True
    config.model.cpu_fusion_barriers = False
    assert common.build_encoder(config).cpu_fusion_barriers is False
    old = ml_collections.ConfigDict(json.loads(get_default_config().to_json()))
    del old.model["cpu_fusion_barriers"]
    validate_config(old)
    assert common.build_encoder(old).cpu_fusion_barriers is True
    config.model.name = "vit_s"  # No barriers to switch off; the option is accepted and moot.
    common.build_encoder(config)
    loaded = json.loads(get_default_config().to_json())  # A config.json edited by hand.
    loaded["model"]["cpu_fusion_barriers"] = "yes"
    with pytest.raises(ConfigError, match="config.model.cpu_fusion_barriers='yes' is invalid: "
                                          "must be true or false"):
        validate_config(ml_collections.ConfigDict(loaded))


def test_data_streaming_is_a_boolean_and_absent_in_older_configs():
    config = get_default_config()
    assert config.data.streaming is False
    validate_config(config)
    old = ml_collections.ConfigDict(json.loads(config.to_json()))  # A run's config.json from
    del old.data["streaming"]  # before the option: it loads its splits into memory.
    validate_config(old)
    loaded = json.loads(config.to_json())
    loaded["data"]["streaming"] = "yes"
    with pytest.raises(ConfigError, match="config.data.streaming='yes' is invalid: must be true "
                                          "or false"):
        validate_config(ml_collections.ConfigDict(loaded))
