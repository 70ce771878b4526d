"""One error path for the command lines (`main.py`, `python -m amcl_jax.reproduce`).

Everything a user can cause ends in one line on stderr, `error: <what>`, that names the field,
flag or file, what was given and what is allowed (or what to do), and an exit code:

- 2: usage. The command line or the config is wrong, found before the run starts (an invalid
  field or flag, a config that cannot continue the workdir's run, evaluation arguments);
- 1: runtime. Found while running: data files, a busy workdir, checkpoints, memory, a full
  disk, a non-finite loss, or an unexpected exception (named by its type);
- 130: interrupted (Ctrl-C), with a line saying how to resume;
- 143: terminated (SIGTERM) outside the training loop (`terminate_on_sigterm`: while loading
  data, compiling, restoring or evaluating), with a line saying how to resume. Inside the loop
  SIGTERM is a preemption: the trainer checkpoints, stops and exits 0.

The traceback is printed only with the debug switch: `--debug` or the environment variable
`AMCL_JAX_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

USAGE = 2
RUNTIME = 1
INTERRUPTED = 130
TERMINATED = 128 + signal.SIGTERM
DEBUG_ENV = "AMCL_JAX_DEBUG"


class UsageError(ValueError):
    """A wrong argument or combination, found before anything runs: exit code 2."""


class RunError(RuntimeError):
    """A failure found while running whose message already says what to do: exit code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (`terminate_on_sigterm`). A KeyboardInterrupt, so that
    no `except Exception` swallows it and every `with` block (the workdir's lock) unwinds."""


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: a no-op).

    Python's default SIGTERM ends the process at once, leaving the workdir's run.lock behind;
    raising instead releases it and ends in one line (`exit_on_error`). The training loop
    installs its own handler (a preemption: checkpoint and stop) and puts this one back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(*_) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def debug_enabled(argv: list[str] | None = None) -> bool:
    """The debug switch: `AMCL_JAX_DEBUG=1` (or true/yes), or `--debug` among `argv`."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    return any(arg in ("--debug", "--debug=true", "--debug=1") for arg in (argv or ()))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def describe(error: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception that reached the command line."""
    from amcl_jax.fields import ConfigError

    if isinstance(error, (UsageError, ConfigError)):
        return " ".join(str(error).split()), USAGE
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" writing {error.filename}" if error.filename else ""
        return (f"no space left on the device{where}: the checkpoints written before are kept; "
                "free some space and run the same command to resume"), RUNTIME
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}", RUNTIME
    if isinstance(error, MemoryError):
        return (f"out of memory ({_first_line(error) or 'MemoryError'}); try a smaller "
                "batch_size, model or data.load_size"), RUNTIME
    message = _first_line(error)
    if "No space left" in message or ("RESOURCE_EXHAUSTED" in message
                                      and "Error writing" in message):
        return (f"no space left on the device ({message[:300]}): the checkpoints written before "
                "are kept; free some space and run the same command to resume"), RUNTIME
    if "RESOURCE_EXHAUSTED" in message or "Out of memory" in message:
        return (f"out of device memory ({message[:300]}); try a smaller batch_size or model"
                ), RUNTIME
    known = isinstance(error, RunError) or type(error).__module__.startswith("amcl_jax")
    if known or isinstance(error, (ValueError, FileNotFoundError)):
        return " ".join(str(error).split()), RUNTIME
    return (f"{type(error).__name__}: {message[:500]} (run with --debug or "
            f"{DEBUG_ENV}=1 for the traceback)"), RUNTIME


def fail(message: str, code: int) -> None:
    """Prints `error: message` on stderr and exits with `code`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def exit_on_error(error: BaseException, *, resume_hint: str, debug: bool) -> None:
    """The command lines' handler: re-raises with `debug`, else one line and the exit code.

    `resume_hint`: what to run again after Ctrl-C (e.g. "the same command").
    """
    if debug:
        raise error
    if isinstance(error, KeyboardInterrupt):
        what, code = (("terminated (SIGTERM)", TERMINATED) if isinstance(error, Terminated)
                      else ("interrupted", INTERRUPTED))
        print(f"error: {what}; the checkpoints written so far are kept: run {resume_hint} "
              "to resume", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # At once: a checkpoint being written stays unfinished (the previous one stays newest)
        # instead of its threads printing tracebacks at interpreter shutdown. The workdir's lock
        # was released on the way here.
        os._exit(code)
    message, code = describe(error)
    if _checkpoint_failed or message.startswith("no space left"):
        # Orbax's threads may still hold a failed restore's reads or a failed save's writes:
        # leave at once, as after Ctrl-C, before the interpreter's shutdown tears them down
        # (past the hooks of `silence_checkpoint_noise`) and prints their tracebacks.
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)
    fail(message, code)


# --------------------------------------------------------------------------------------------
# argparse command lines (python -m amcl_jax.reproduce)
# --------------------------------------------------------------------------------------------
class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `error: ...` line and exit code 2 (no usage
    block; `--help` still prints it)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see --help)", USAGE)
        raise AssertionError  # Unreachable: fail exits.


def usage_call(flag: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)`, its ValueError, FileNotFoundError or KeyError turned into a
    UsageError naming `flag`: for the checks of command-line arguments."""
    try:
        return function(*args, **kwargs)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{flag}: {' '.join(str(e).split())}") from e


def run_command(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
                *, resume_hint: str = "the same command") -> int:
    """Runs an argparse `main(argv)`; an exception ends as one line and its exit code
    (the traceback with `--debug` or AMCL_JAX_DEBUG=1)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = debug_enabled(argv)
    try:
        return main([a for a in argv if a != "--debug"]) or 0
    except (KeyboardInterrupt, Exception) as e:
        exit_on_error(e, resume_hint=resume_hint, debug=debug)
        return RUNTIME  # Unreachable: exit_on_error exits or raises.


# --------------------------------------------------------------------------------------------
# Noise from a failed checkpoint restore or save
# --------------------------------------------------------------------------------------------
_CLOSED_LOOP = "Event loop is closed"
# TensorStore's errors (Orbax's reads and writes) start with an absl status code.
_TENSORSTORE_STATUS = re.compile(
    r"^(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
    r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
    r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED): ")
_silenced = False
_checkpoint_failed = False


def silence_checkpoint_noise(*, after_failure: bool = True) -> None:
    """A failed checkpoint restore or save reaches the run as one exception (a restore: handled
    or reported; a save, e.g. on a full disk: raised by the next save or `close`), but Orbax's
    worker threads and coroutines are torn down noisily: `RuntimeError: Event loop is closed`,
    and the errors of its other pending reads and writes ("Exception ignored in: <coroutine
    ...>", "Future/Task exception was never retrieved" with a raw TensorStore status line), from
    threading, asyncio's logger or Python's unraisable hook, before and after the `error:` line.
    Those now drop; every other error is printed as before. Called before a run's first
    checkpoint operation (`after_failure=False`) and after a failed restore, after which
    `exit_on_error` leaves without the interpreter's shutdown. Idempotent."""
    global _silenced, _checkpoint_failed
    _checkpoint_failed = _checkpoint_failed or after_failure
    if _silenced:
        return
    _silenced = True
    import logging as std_logging

    def closed_loop(error: BaseException | None) -> bool:
        return isinstance(error, RuntimeError) and _CLOSED_LOOP in str(error)

    def in_orbax(filename: str) -> bool:
        return f"{os.sep}orbax{os.sep}" in filename

    def noise(error: BaseException | None, target: Any = None) -> bool:
        """A closed event loop, a TensorStore error, or an error raised in Orbax's code or in
        one of its coroutines (a failed restore's or save's other reads and writes)."""
        if closed_loop(error) or _TENSORSTORE_STATUS.match(str(error or "")):
            return True
        code = getattr(target, "cr_code", None)
        if code is not None and in_orbax(code.co_filename):
            return True
        tb = getattr(error, "__traceback__", None)
        while tb is not None:
            if in_orbax(tb.tb_frame.f_code.co_filename):
                return True
            tb = tb.tb_next
        return False

    thread_hook = threading.excepthook

    def on_thread_error(args: threading.ExceptHookArgs) -> None:
        if not noise(args.exc_value):
            thread_hook(args)

    threading.excepthook = on_thread_error
    unraisable_hook = sys.unraisablehook

    def on_unraisable(unraisable: Any) -> None:
        if not noise(unraisable.exc_value, unraisable.object):
            unraisable_hook(unraisable)

    sys.unraisablehook = on_unraisable

    class _WithoutRestoreNoise(std_logging.Filter):
        """asyncio's "Future exception was never retrieved" of those reads and writes, and
        closed loops."""

        def filter(self, record: std_logging.LogRecord) -> bool:
            error = record.exc_info[1] if record.exc_info else None
            return not (noise(error) or _CLOSED_LOOP in record.getMessage())

    std_logging.getLogger("asyncio").addFilter(_WithoutRestoreNoise())


silence_failed_restore_noise = silence_checkpoint_noise  # The name it had before saves.
