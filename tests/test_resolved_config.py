"""The AMCL form's fields resolved: `forms.resolve`, `main.py --print_config`, and
config.json recording them, while workdirs that recorded None still resume."""

import functools
import json
import os
import sys

import _runs
import jax
import ml_collections
import pytest
from conftest import tiny_config

from amcl_jax import forms, methods, optim, program, recipes, reproduce, train, workdir
from amcl_jax import state as state_lib
from amcl_jax.config import get_field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _as_recorded(config):
    """The config as a run reads it back from config.json (load_config)."""
    return ml_collections.ConfigDict(json.loads(config.to_json()))


@pytest.mark.parametrize("method", [m.name for m in methods.registered() if m.supports_amcl])
@pytest.mark.parametrize("form", forms.FORMS)
def test_resolve_fills_every_form_field_and_is_idempotent(method, form):
    config = recipes.method_config(method, True)
    config.amcl.form = form
    resolved = _as_recorded(forms.resolve(config))
    assert resolved.amcl.form == form
    again = forms.resolve(resolved)
    for field in forms.fields():
        assert get_field(resolved, field) is not None, field
        assert get_field(again, field) == get_field(resolved, field), field
    config.amcl.beta = 0.25  # A field set explicitly stays as set.
    assert forms.resolve(config).amcl.beta == 0.25
    with pytest.raises(ValueError, match="forms.resolve"):  # Unresolved: refused by name.
        program.build(config, program.data_mesh(), 1)


@pytest.mark.parametrize("form", ["authors", "project"])
def test_a_resolved_config_builds_the_same_train_state(form):
    config = tiny_config(**{"amcl.form": form, "amcl.num_heads": 2})
    states = []
    for c in (forms.resolve(config), forms.resolve(_as_recorded(forms.resolve(config)))):
        method = methods.get_method(c.method)
        model = method.build_model(c)
        tx, _ = optim.build_optimizer(c, total_steps=4)
        state = jax.jit(functools.partial(state_lib.create_train_state, c, model, method, tx))()
        states.append(state_lib.state_sha256(state))
    assert states[0] == states[1]


def test_resume_compares_form_fields_as_resolved():
    config = tiny_config()
    old_record = json.loads(config.to_json())  # Written before config.json was resolved: None.
    del old_record["amcl"]["form"], old_record["moco"]  # Older still: no form, no MoCo yet.
    new_record = json.loads(forms.resolve(config).to_json())
    assert workdir.config_changes(old_record, config) == ([], [])
    assert workdir.config_changes(new_record, config) == ([], [])
    spelled_out = tiny_config(**{"amcl.beta": 0.1, "amcl.negatives": "logsumexp"})
    assert workdir.config_changes(old_record, spelled_out) == ([], [])  # The form's values.
    refused, _ = workdir.config_changes(old_record, tiny_config(**{"amcl.form": "authors"}))
    fields = [field for field, _, _ in refused]
    assert "amcl.form" in fields and "amcl.negatives" in fields
    assert ("amcl.beta", 0.1, 1e-4) in refused


def test_config_json_records_resolved_values_and_a_none_record_still_resumes(tmp_path):
    path = str(tmp_path / "run")
    config = tiny_config(**{"data.dataset": "digits", "data.load_size": 8, "total_steps": 1,
                            "eval.every_steps": 1, "checkpoint.every_steps": 1,
                            "eval.max_bank_examples": 64, "eval.max_query_examples": 32,
                            "data.augmentations": "ae", "amcl.num_heads": 2})
    train.train_and_evaluate(config, path)
    recorded = json.load(open(os.path.join(path, "config.json")))
    assert recorded == json.loads(forms.resolve(config).to_json())
    assert all(recorded[f.split(".")[0]][f.split(".")[1]] is not None for f in forms.fields())
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))  # As an older version recorded it: None.
    config.total_steps = 2
    summary = train.train_and_evaluate(config, path)
    assert summary["steps"] == 2
    assert json.load(open(os.path.join(path, "config.json")))["amcl"]["negatives"] == "logsumexp"


def test_a_reproduce_run_recorded_with_none_is_the_same_config(tmp_path):
    config = tiny_config()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(config.to_json())  # None: written before.
    (run_dir / "summary.json").write_text(json.dumps({"knn_top1": 0.5}))
    assert reproduce.run_one(config, str(run_dir), linear_probe=False,
                             log=lambda _: None) == {"knn_top1": 0.5}


def test_print_config_prints_the_resolved_config_and_touches_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    target = tmp_path / "never_made"
    done = _runs.run_script(
        [sys.executable, "main.py", "--config=configs/quickstart.py:method=moco",
         "--config.amcl.form=authors", "--print_config", f"--workdir={target}"], env, 300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["method"] == "moco" and printed["amcl"]["form"] == "authors"
    # Every form field is spelled out, with the authors' MoCo values; resolving is idempotent.
    assert printed == json.loads(forms.resolve(_as_recorded(
        ml_collections.ConfigDict(printed))).to_json())
    assert all(printed[f.split(".")[0]][f.split(".")[1]] is not None for f in forms.fields())
    assert printed["moco"]["directions"] == "query_and_key"
    assert printed["amcl"]["negatives"] == "topk" and printed["amcl"]["beta"] == 1e-4
    assert printed["optimizer"]["grad_clip_norm"] == 1.0
    assert not target.exists()
