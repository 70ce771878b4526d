"""Subprocess runs of `main.py` shared by test_distributed.py and test_reliability.py.

Every run uses one tiny configuration (quickstart on digits, the tests' two-stage ResNet at width
0.125, 8x8 views, global batch 8, a checkpoint every step, constant learning rate so the step
count does not change the compiled program) and the test run's persistent XLA compilation cache
(conftest.py), so only the first run of each device layout pays for compilation.

The tests' `python SCRIPT ...` processes (`main.py`, the multi-device workers) are forked from a
process that has imported TensorFlow already (`Forked`, `run_script`; tests/_zygote.py says how
they stay plain processes): about 4.5 CPU-seconds of imports saved on each of about forty.
Processes that must start bare (TensorFlow blocked, a `sitecustomize`, `python -c`, `-m`, an
installed wheel) still use `subprocess`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOTAL_STEPS = 10
# The test run's shared folder (conftest.py makes it), inherited by every process of the run.
SHARED_DIR_ENV = "AMCL_JAX_TEST_SHARED_DIR"
# The persistent compilation cache keeps programs that take this long or more to compile (train
# steps, feature extractors): writing every small one too (an operation run outside `jit`, an
# init) cost more than it saved, a fifth of the CPU time of the loss and authors'-form tests,
# which never read one back (docs/history.md). conftest.py sets it for the test processes.
CACHE_MIN_COMPILE_SECONDS = 1.0

TINY_FLAGS = [
    "--config=configs/quickstart.py",
    "--config.data.image_size=8", "--config.data.load_size=8",
    "--config.model.name=_resnet_test", "--config.model.width=0.125",
    "--config.batch_size=8",
    "--config.projector.hidden_dim=16", "--config.projector.out_dim=8",
    "--config.amcl.temperature_hidden_dim=8",
    "--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0",
    "--config.eval.max_bank_examples=64", "--config.eval.max_query_examples=32",
    "--config.eval.knn_k=5", "--config.eval.batch_size=32", "--config.eval.every_steps=1000",
    "--config.log_every_steps=1", "--config.checkpoint.every_steps=1",
]


@functools.cache
def session_dir() -> str:
    """The test run's shared folder (conftest.py makes it; every xdist worker sees the same)."""
    shared = os.environ.get(SHARED_DIR_ENV)
    if not shared:  # Imported without conftest.py: a folder of this process's own.
        shared = tempfile.mkdtemp(prefix="amcl_jax_runs_")
        atexit.register(shutil.rmtree, shared, ignore_errors=True)
    folder = os.path.join(shared, "runs")
    os.makedirs(folder, exist_ok=True)
    return folder


@contextlib.contextmanager
def exclusive(name: str):
    """Holds the test run's lock `name` (one holder across all xdist workers at a time)."""
    with open(os.path.join(session_dir(), f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """This process's environment without JAX/XLA/launcher settings, for a subprocess on the CPU
    backend with `devices` XLA host devices and the repo on its path; `extra` added last."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_", "SLURM_", "TPU_", "OMPI_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(extra)
    return env


def cache_settings() -> dict[str, object]:
    """The test run's persistent compilation cache, as `jax.config` names and values: one folder
    in the run's shared folder for every test process (conftest.py sets these) and subprocess
    (`run_env` passes them as JAX_* variables), programs that compile in
    CACHE_MIN_COMPILE_SECONDS or more."""
    return {
        "jax_compilation_cache_dir": os.path.join(os.path.dirname(session_dir()), "xla_cache"),
        "jax_persistent_cache_min_compile_time_secs": CACHE_MIN_COMPILE_SECONDS,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        # A size limit turns on JAX's file lock around each cache read and write: several
        # processes share the folder, and without the lock one could read an entry another is
        # still writing.
        "jax_compilation_cache_max_size": 16 * 1024**3,
    }


def run_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """`cpu_env` with most optimisations off and the test run's compilation cache
    (`cache_settings`)."""
    return cpu_env(devices, **{
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        **{name.upper(): str(value) for name, value in cache_settings().items()},
        **extra})


def worker_env(devices: int) -> dict[str, str]:
    """`run_env` for the workers that compile many small programs and run each once or never
    (the 8-device equivalence and data-parallel workers): XLA's full optimisation with XLA:CPU's
    older elemental emitters compiles them in about half the CPU time (equivalence: 25 CPU-s
    against 56; weak scaling: 15 against 35), while the train steps of `main.py` runs compile
    faster with most optimisations off and the fusion emitters (11.8 s against 22.2 s,
    bench/results/xla_test_settings_cpu.json). Never the elemental emitters with most
    optimisations off: XLA:CPU then miscompiles the device-side colour jitter (docs/history.md)."""
    env = run_env(devices, JAX_DISABLE_MOST_OPTIMIZATIONS="0")
    env["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"  # After cpu_env's device count.
    return env


def main_command(workdir: str, total_steps: int = TOTAL_STEPS, *more: str,
                 wrapper: tuple[str, ...] = ()) -> list[str]:
    """`python [wrapper...] main.py` with the tiny flags; a wrapper script runs main.py itself."""
    return [sys.executable, *wrapper, "main.py", *TINY_FLAGS,
            f"--config.total_steps={total_steps}", f"--workdir={workdir}", *more]


# --------------------------------------------------------------------------------------------
# Python scripts forked from a process that has imported TensorFlow already (tests/_zygote.py)
# --------------------------------------------------------------------------------------------
class Forked:
    """`python SCRIPT ARGS...` forked by this test process's zygote; its stdout and stderr go to
    files. As `subprocess.Popen`: pid, poll, wait, returncode (negative: the signal),
    send_signal, kill."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout_path: str,
                 stderr_path: str, cwd: str = ROOT) -> None:
        assert argv[0] == sys.executable and argv[1].endswith(".py"), argv  # A script.
        self.args, self.returncode = argv, None
        for path in (stdout_path, stderr_path):  # There (empty) when this returns, as Popen's.
            open(path, "w").close()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(_zygote())
        self._conn.sendall((json.dumps({"argv": argv[1:], "env": env, "cwd": cwd,
                                        "stdout": stdout_path, "stderr": stderr_path})
                            + "\n").encode())
        self._buffer = b""
        answer = self._line(60)
        assert answer is not None, f"the zygote forked no process for {argv[1:3]} in 60 s"
        kind, pid = answer.split()
        assert kind == "pid", kind
        self.pid = int(pid)

    def _line(self, timeout: float | None) -> str | None:
        """The zygote's next line, or None if none comes within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return None
            data = self._conn.recv(4096)
            assert data, f"the zygote closed the connection of pid {getattr(self, 'pid', '?')}"
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        self._exited(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._exited(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _exited(self, timeout: float | None) -> bool:
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                return False
            kind, code = line.split()
            assert kind == "exit", line
            self.returncode = int(code)
            self._conn.close()
        return True

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@functools.cache
def _zygote() -> str:
    """The socket of this test process's zygote, started on first use; it exits with us."""
    path = os.path.join(tempfile.mkdtemp(prefix="amcl_jax_zygote_"), "socket")
    server = subprocess.Popen([sys.executable, os.path.join("tests", "_zygote.py"), path],
                              cwd=ROOT, env=cpu_env(1), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready", "the zygote did not start"

    def stop() -> None:  # Closing its stdin tells it to exit; waiting counts its CPU time.
        server.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    atexit.register(stop)
    return path


def run_script(argv: list[str], env: dict[str, str], timeout: float, cwd: str = ROOT
               ) -> subprocess.CompletedProcess:
    """As `subprocess.run(argv, capture_output=True, text=True)` for `python SCRIPT ARGS...`,
    forked (`Forked`); a process past `timeout` is killed and TimeoutExpired raised."""
    folder = tempfile.mkdtemp(prefix="amcl_jax_script_")
    try:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = Forked(argv, env, out, err, cwd=cwd)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        with open(out) as stdout, open(err) as stderr:
            return subprocess.CompletedProcess(argv, process.returncode, stdout.read(),
                                               stderr.read())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Run:
    """A `main.py` process whose stdout and stderr go to files in its workdir's parent."""

    def __init__(self, workdir: str, env: dict[str, str], total_steps: int = TOTAL_STEPS,
                 tag: str = "run", wrapper: tuple[str, ...] = ()) -> None:
        os.makedirs(os.path.dirname(workdir), exist_ok=True)
        self.stdout_path = f"{workdir}.{tag}.out"
        self.stderr_path = f"{workdir}.{tag}.err"
        self.process = Forked(main_command(workdir, total_steps, wrapper=wrapper), env,
                              self.stdout_path, self.stderr_path)

    @property
    def stdout(self) -> str:
        with open(self.stdout_path) as f:
            return f.read()

    @property
    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def report(self) -> str:
        """Exit code, stdout and the informative end of stderr, for an assertion message."""
        return (f"exit {self.process.returncode} ({self.stderr_path}):\n{self.stdout[-2000:]}\n"
                f"{stderr_excerpt(self.stderr)}")

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while text not in self.stdout:
            if self.process.poll() is not None:
                raise AssertionError(f"before {text!r}: {self.report()}")
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.stdout}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out: {self.report()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def check(self, timeout: float = 300) -> Run:
        code = self.wait(timeout)
        assert code == 0, self.report()
        return self


def stderr_excerpt(stderr: str, limit: int = 6000) -> str:
    """The end of a process's stderr without Python's list of loaded extension modules.

    A fatal error (abort, segfault) prints the thread stacks and then that list, which alone
    fills any fixed-size tail; the error line and the stacks are what explain the failure.
    """
    stderr = re.sub(r"\nExtension modules: .*?\(total: \d+\)", "\n[extension modules]", stderr,
                    flags=re.DOTALL)
    fatal = stderr.find("Fatal Python error")
    if fatal >= 0:  # Keep the lines before it too: what the process was doing.
        return stderr[max(0, fatal - limit // 3):][:limit]
    return stderr[-limit:]


def summary(workdir: str) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@functools.cache
def baseline() -> str:
    """Workdir of an uninterrupted single-device run of TOTAL_STEPS (read-only: copy it), run
    once per test run: the first xdist worker to ask runs it, the other waits and reads it."""
    workdir = os.path.join(session_dir(), "baseline")
    done = f"{workdir}.done"
    with exclusive("baseline"):
        if not os.path.exists(done):
            shutil.rmtree(workdir, ignore_errors=True)  # What a failed try left.
            Run(workdir, run_env(1)).check()
            open(done, "w").close()
    return workdir


def copy_workdir(source: str, target: str) -> str:
    shutil.copytree(source, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
