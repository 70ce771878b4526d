"""Every user error ends in one `error:` line with exit code 2 (usage) or 1 (runtime); resume
refuses what it cannot honour and writes nothing; one run per workdir; kNN results are never
replaced by ones from invalid arguments (issue 22)."""

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import _runs
import numpy as np
import pytest
from conftest import set_field, tiny_config

from amcl_jax import checkpoints, errors, reproduce, train, workdir
from amcl_jax.config import ConfigError, get_default_config, validate_config
from amcl_jax.data import inputs
from amcl_jax.evaluate import knn_eval

# ---- In-process: validate_config (field, value, text the one-line message must hold). ----
CONFIG_CASES = [
    ("projector.hidden_dim", 0, ">= 1"),
    ("data.num_views", 1, ">= 2"),
    ("projector.num_layers", 0, ">= 1"),
    ("amcl.temperature_hidden_dim", 0, ">= 1"),
    ("predictor.hidden_dim", 0, ">= 1"),
    ("moco.queue_size", 0, ">= 1"),
    ("amcl.num_heads", 0, ">= 1"),
    ("data.max_train_examples", 0, "-1 for all"),
    ("data.load_size", 0, "-1 for all"),
    ("eval.max_bank_examples", 0, "-1 for all"),
    ("eval.max_query_examples", -3, "-1 for all"),
    ("data.color_jitter_strength", -0.5, ">= 0"),
    ("online_probe.num_classes", 1, ">= 2"),
    ("data.augmentations", "", "allow_no_augmentation"),
    ("data.dataset", "no_such_dataset", "'digits', 'image_folder'"),
    ("data.dataset", "cifar100x", "did you mean 'cifar100'"),
    ("eval.knn_k", 0, ">= 1"),
    ("eval.knn_temperature", 0.0, "> 0"),
    ("simclr.temperature", -1.0, "> 0"),
    ("batch_size", 0, "> 0"),
    ("data.image_size", 1, ">= 4"),
    ("checkpoint.every_steps", 0, ">= 1"),
    ("log_every_steps", 0, ">= 1"),
]


@pytest.mark.parametrize("field,value,expected", CONFIG_CASES)
def test_bad_config_value_is_one_line_naming_the_field(field, value, expected):
    config = get_default_config()
    set_field(config, field, value)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message, code = errors.describe(error.value)
    assert code == errors.USAGE and "\n" not in message
    assert f"config.{field}=" in message and expected in message, message


def test_digits_with_a_data_dir_and_the_augmentation_opt_in():
    config = get_default_config()
    config.data.dataset = "digits"
    config.data.data_dir = "."
    with pytest.raises(ConfigError, match="data.data_dir.*reads no files"):
        validate_config(config)
    config.data.data_dir = ""
    config.data.dataset = "image_folder"
    with pytest.raises(ConfigError, match="config.data.data_dir=''.*needs data.data_dir"):
        validate_config(config)
    config.data.dataset = "digits"
    config.data.augmentations = ""
    config.data.allow_no_augmentation = True
    validate_config(config)  # Identical views, asked for explicitly.


DATA_CASES = [  # check_data_sizes(config overrides, num_train, bank labels, queries) -> text.
    ({"batch_size": 64}, 10, [0, 1] * 8, 4, "batch_size=64"),
    ({"eval.knn_k": 20}, 100, [0, 1] * 8, 4, "eval.knn_k=20"),
    ({}, 100, [3] * 300, 4, "1 class(es)"),
    ({}, 100, [0, 1] * 200, 0, "eval_test_split"),
]


@pytest.mark.parametrize("overrides,num_train,bank,queries,expected", DATA_CASES)
def test_data_too_small_for_the_config(overrides, num_train, bank, queries, expected):
    config = tiny_config(**overrides)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        inputs.check_data_sizes(config, num_train=num_train, bank_labels=np.asarray(bank),
                               num_queries=queries)


def test_a_state_that_cannot_fit_fails_with_an_estimate():
    import jax

    config = tiny_config(**{"amcl.num_heads": 10**9})
    state = collections.namedtuple("State", ["params"])(
        jax.ShapeDtypeStruct((10**9, 16, 8), np.float32))
    with pytest.raises(ConfigError, match=r"does not fit.*need at least [\d.]+ (TiB|GiB|PiB).*"
                                          r"amcl.num_heads=1000000000"):
        inputs.check_state_fits(config, state)


# ---- In-process: python -m amcl_jax.reproduce's arguments. ----
REPRODUCE_CASES = [
    ([], "required"),
    (["--table=no_such_table", "--scale=smoke", "--workdir=W"], "--table"),
    (["--table=heads", "--scale=huge", "--workdir=W"], "invalid choice"),
    (["--table=heads", "--scale=smoke", "--workdir=W", "--seeds=a"], "--seeds"),
    (["--table=heads", "--scale=smoke", "--workdir=W", "--set=amcl.num_head=3"], "--set"),
    (["--table=heads", "--scale=smoke", "--workdir=W", "--methods=nothing"], "--methods"),
    (["--table=heads", "--scale=smoke", "--workdir=W", "--no_such_flag"], "unrecognized"),
]


@pytest.mark.parametrize("argv,expected", REPRODUCE_CASES)
def test_reproduce_argument_errors_are_one_line(argv, expected, capsys, tmp_path):
    argv = [a.replace("=W", f"={tmp_path}") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        errors.run_command(reproduce.main, argv)
    assert exit_.value.code == errors.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


# ---- Subprocesses: main.py (argv, exit code, text of the one error line). ----
MAIN_CASES = [
    (["--config.amcl.num_head=3"], 2, "did you mean 'num_heads'"),
    (["--config.amcll.num_heads=3"], 2, "did you mean 'amcl'"),
    (["--no_such_flag=1"], 2, "no_such_flag"),
    (["--knn_k=3"], 2, "--knn_k is read by --mode=knn"),
    (["--config.batch_size=eight"], 2, "batch_size"),
    # One refusal of validate_config: its others are tested in-process above (CONFIG_CASES).
    (["--config.data.dataset=no_such_dataset"], 2, "config.data.dataset='no_such_dataset'"),
    # Refused once the data and the model's shapes are known: one case for each check's place
    # in a run (each check's other refusals are tested in-process above: DATA_CASES).
    (["--config.amcl.num_heads=1000000000"], 2, "does not fit"),
    (["--config.batch_size=4096"], 2, "config.batch_size=4096"),
    (["--config.data.train_split=nosplit"], 1, "nosplit"),
    (["--mode=knn"], 2, "config.json"),
]


def _main(argv, workdir, env=None, timeout=240):
    evaluating = any(a.startswith("--mode=") for a in argv)
    config = [] if evaluating else ["--config=configs/quickstart.py"]
    return _runs.run_script([sys.executable, "main.py", *config, f"--workdir={workdir}", *argv],
                            env or _runs.run_env(1), timeout)


def _one_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_main_user_errors_are_one_line_with_their_exit_code(tmp_path):
    failures = []
    for i, (argv, code, expected) in enumerate(MAIN_CASES):
        result = _main(argv, str(tmp_path / f"w{i}"))
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if (result.returncode != code or len(lines) != 1 or expected not in lines[0]
                or "Traceback" in result.stderr):
            failures.append((argv, result.returncode, lines or result.stderr[-1500:]))
    assert not failures, failures


def test_debug_switch_shows_the_traceback(tmp_path):
    result = _main(["--config.amcl.num_head=3"], str(tmp_path),
                   env=_runs.run_env(1, AMCL_JAX_DEBUG="1"), timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr


# ---- Resume: refused changes write nothing; safe ones are recorded. ----
def _fake_run(path, config):
    os.makedirs(os.path.join(path, "checkpoints", "4"))
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))


def _snapshot(path):
    files = {}
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                files[os.path.relpath(os.path.join(folder, name), path)] = f.read()
    return files


@pytest.mark.parametrize("field,value", [
    ("data.dataset", "digits"), ("model.width", 0.25), ("amcl.num_heads", 2), ("seed", 1),
    ("batch_size", 16), ("optimizer.learning_rate", 0.1), ("method", "moco"),
    ("data.augmentations", "ae"), ("data.image_size", 16)])
def test_resume_refuses_a_training_change_and_writes_nothing(tmp_path, field, value):
    path = str(tmp_path / "run")
    _fake_run(path, tiny_config())
    before = _snapshot(path)
    with pytest.raises(workdir.ResumeRefusedError) as error:
        train.train_and_evaluate(tiny_config(**{field: value}), path)
    message, code = errors.describe(error.value)
    assert code == errors.USAGE and field in message and "config.json" in message, message
    assert _snapshot(path) == before  # config.json untouched, no lock or metrics left.


def test_resume_accepts_and_records_safe_changes_and_reads_old_configs(tmp_path):
    config = tiny_config()
    recorded = json.loads(config.to_json())
    del recorded["amcl"]["chunk_size"]  # An older run's file, without a newer field.
    recorded["model"]["conv_impl"] = "auto"  # ... and with a field since removed.
    new = tiny_config(**{"total_steps": 9, "eval.knn_k": 3, "checkpoint.every_steps": 5})
    refused, accepted = workdir.config_changes(recorded, new)
    assert refused == [] and [f for f, _, _ in accepted] == [
        "checkpoint.every_steps", "eval.knn_k", "total_steps"]
    probe = tiny_config(**{"online_probe.enabled": True})
    resolved = json.loads(probe.to_json())
    resolved["online_probe"]["num_classes"] = 10  # Resolved at start and recorded.
    assert workdir.config_changes(resolved, probe) == ([], [])
    assert all(not workdir.safe_on_resume(f) for f in (
        "amcl.some_future_field", "optimizer.grad_clip_norm", "data.augment_on", "seed"))


def test_a_truncated_config_json_is_named(tmp_path):
    path = str(tmp_path)
    _fake_run(path, tiny_config())
    with open(os.path.join(path, "config.json"), "r+") as f:
        f.truncate(40)
    with pytest.raises(workdir.RecordedConfigError, match="config.json cannot be read"):
        train.train_and_evaluate(tiny_config(), path)
    with pytest.raises(workdir.RecordedConfigError, match="config.json cannot be read"):
        checkpoints.load_config(path)  # The evaluation modes' reader.


# ---- One run per workdir. ----
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    path = str(tmp_path)
    lock_path = os.path.join(path, workdir.LOCK_FILE)
    with workdir.WorkdirLock(path):
        holder = json.load(open(lock_path))
        assert holder["pid"] == os.getpid() and holder["host"]
    assert not os.path.exists(lock_path)  # Released on exit.

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = workdir.WorkdirLock(path)._record()
        live.update(pid=sleeper.pid, start_time=workdir._process_start_time(sleeper.pid))
        with open(lock_path, "w") as f:
            json.dump(live, f)
        with pytest.raises(workdir.WorkdirBusyError, match=f"pid {sleeper.pid}"):
            workdir.WorkdirLock(path).acquire()
        # The whole run is refused before it writes anything.
        with pytest.raises(workdir.WorkdirBusyError):
            train.train_and_evaluate(tiny_config(), path)
        assert sorted(os.listdir(path)) == [workdir.LOCK_FILE]
        _, code = errors.describe(workdir.WorkdirBusyError("busy"))
        assert code == errors.RUNTIME
        other_host = dict(live, host="another-host")
        with open(lock_path, "w") as f:
            json.dump(other_host, f)
        with pytest.raises(workdir.WorkdirBusyError, match="another-host"):
            workdir.WorkdirLock(path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with open(lock_path, "w") as f:  # The holder is gone (kill -9): stale, taken over.
        json.dump(live, f)
    lock = workdir.WorkdirLock(path)
    lock.acquire()
    assert json.load(open(lock_path))["pid"] == os.getpid()
    lock.release()
    with open(lock_path, "w") as f:  # Cut short by a kill while it was written.
        f.write('{"pid": 12')
    with workdir.WorkdirLock(path):
        pass


# ---- kNN results: validated arguments, atomic replacement. ----
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pretrained"))
    config = tiny_config(**{
        "data.dataset": "digits", "data.load_size": 8, "data.augmentations": "ae",
        "amcl.num_heads": 2, "total_steps": 1, "log_every_steps": 1, "eval.batch_size": 64,
        "eval.max_bank_examples": 64, "eval.max_query_examples": 32})
    train.train_and_evaluate(config, path)
    return path


@pytest.mark.parametrize("kwargs,expected", [
    ({"layer": "head9"}, "2 heads"), ({"layer": "head2"}, "head0 to head1"),
    ({"layer": "neck"}, "allowed are backbone"), ({"k": 0}, "--knn_k=0"),
    ({"k": 65}, "64 labelled examples"), ({"temperature": 0.0}, "--knn_temperature=0.0"),
    ({"temperature": -1.0}, "must be > 0")])
def test_knn_refuses_invalid_arguments_and_keeps_the_result_file(pretrained, kwargs, expected):
    path = os.path.join(pretrained, knn_eval.RESULT_FILE)
    with open(path, "w") as f:
        f.write('{"kept": true}')
    with pytest.raises(errors.UsageError, match=expected):
        knn_eval.run_knn(pretrained, **kwargs)
    assert json.load(open(path)) == {"kept": True}


def test_knn_result_is_written_whole(pretrained):
    result = knn_eval.run_knn(pretrained, k=3, layer="head1")
    with open(os.path.join(pretrained, knn_eval.RESULT_FILE)) as f:
        assert json.load(f)["knn_top1_final"] == result["knn_top1_final"]
    assert not [n for n in os.listdir(pretrained) if n.endswith(".tmp")]


# ---- Quiet fallback and Ctrl-C. ----
def test_a_failed_restores_torn_down_threads_and_coroutines_are_silenced():
    script = """if True:
        import logging
        import os
        import threading
        from amcl_jax import errors

        def fails(message):
            raise RuntimeError(message)

        class Pending:
            def __await__(self):
                yield

        source = (
            "async def read(message):\\n"
            "    try:\\n"
            "        await Pending()\\n"
            "    finally:\\n"
            "        raise Exception(message)\\n")

        def closed_coroutine(folder, message):  # A pending read whose coroutine is closed.
            namespace = {"Pending": Pending}
            path = os.path.join(os.sep, "site", folder, "serialization.py")
            exec(compile(source, path, "exec"), namespace)
            coroutine = namespace["read"](message)
            coroutine.send(None)
            del coroutine  # Closing it raises: "Exception ignored in: <coroutine ...>".

        def never_retrieved(folder, message):  # asyncio's report of a failed future.
            namespace = {}
            path = os.path.join(os.sep, "site", folder, "serialization.py")
            exec(compile("def read(message):\\n    raise Exception(message)\\n", path, "exec"),
                 namespace)
            try:
                namespace["read"](message)
            except Exception as error:
                logging.getLogger("asyncio").error("Future exception was never retrieved",
                                                   exc_info=error)

        logging.basicConfig()
        errors.silence_failed_restore_noise()
        for message in ("Event loop is closed", "something else"):
            thread = threading.Thread(target=fails, args=(message,))
            thread.start()
            thread.join()
        closed_coroutine("orbax", "error while reading array index")
        closed_coroutine("mine", "a coroutine of another library")
        never_retrieved("orbax", "error while reading another array index")
        never_retrieved("mine", "a future of another library")
    """
    result = subprocess.run([sys.executable, "-c", script], cwd=_runs.ROOT, capture_output=True,
                            text=True, timeout=120)
    assert "Event loop is closed" not in result.stderr
    assert "error while reading array index" not in result.stderr
    assert "error while reading another array index" not in result.stderr
    assert "RuntimeError: something else" in result.stderr  # Other errors still print.
    assert "Exception: a coroutine of another library" in result.stderr, result.stderr
    assert "Exception: a future of another library" in result.stderr, result.stderr


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    run = _runs.Run(str(tmp_path / "run"), _runs.run_env(1), total_steps=50)
    run.wait_for("step      2/")
    run.signal(signal.SIGINT)
    assert run.wait() == errors.INTERRUPTED, run.report()
    line = _one_error_line(run.stderr)
    assert "interrupted" in line and "run the same command to resume" in line
    assert not os.path.exists(os.path.join(str(tmp_path / "run"), workdir.LOCK_FILE))


def test_damaged_archive_and_missing_split_are_named(tmp_path):
    import tarfile

    from amcl_jax.data import load_split

    source = tmp_path / "folder" / "train" / "a"
    source.mkdir(parents=True)
    (source / "x.png").write_bytes(b"0" * 4096)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "folder" / "train", arcname="train")
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:60])
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match=r"cut.tar.gz.*truncated or damaged") as error:
        load_split("image_folder", "train", data_dir=str(truncated), cache_dir=cache)
    assert errors.describe(error.value)[1] == errors.RUNTIME
    with pytest.raises(ValueError, match="nosplit"):
        load_split("image_folder", "nosplit", data_dir=str(tmp_path / "folder"))


def test_an_unwritable_cache_is_named_by_its_field_and_a_read_only_memo_is_skipped(tmp_path):
    import tarfile

    from PIL import Image

    from amcl_jax.data import folders, load_split

    for name, cls in (("a", 0), ("b", 1)):
        folder = tmp_path / "folder" / "train" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), 60 * cls, np.uint8)).save(folder / "x.png")
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "folder" / "train", arcname="train")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # Unwritable even for root, unlike a chmod.
    with pytest.raises(errors.RunError) as error:
        load_split("image_folder", "train", data_dir=str(archive), cache_dir=str(blocker / "c"))
    line, code = errors.describe(error.value)
    assert code == errors.RUNTIME and line.startswith("data.cache_dir=") and "writable" in line
    # An extracted cache where the decoded images cannot be memoised still loads.
    cache = str(tmp_path / "cache")
    root = folders.extract_archive(str(archive), cache_dir=cache)
    (Path(root) / ".amcl_jax").write_text("blocks the memo folder")
    images, labels, num_classes = load_split("image_folder", "train", data_dir=str(archive),
                                             cache_dir=cache)
    assert images.shape == (2, 4, 4, 3) and sorted(labels.tolist()) == [0, 1] and num_classes == 2


def test_processes_checking_one_workdir_at_once_all_pass(tmp_path):
    # Every process of a multi-host run checks the shared workdir as it starts. With one probe
    # file name for all, one process removed the file another had just written, which then
    # failed with "not writable: No such file or directory" (seen in the two-process test).
    import threading

    from amcl_jax import cli

    failures = []

    def check():
        for _ in range(300):
            try:
                cli._check_workdir(str(tmp_path / "shared"))
            except SystemExit as e:
                failures.append(e)
                return

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert os.listdir(tmp_path / "shared") == []  # Nothing left behind.
