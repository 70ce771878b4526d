"""A Python with TensorFlow already imported, from which the tests fork their `main.py` runs.

    python tests/_zygote.py SOCKET   # started by tests/_runs.py, one per test process

Every `main.py` process of the suite spends about 4.5 CPU-seconds importing TensorFlow, Keras
and TensorBoard's hparams plugin (through tf.data and clu's summary writer) before it does
anything the test is about; the suite starts about forty. This server imports them once, then
forks one child per request, which becomes `python SCRIPT ARGS...` from there on:

- its environment, working directory, stdout and stderr (files) and `sys.argv` are the
  request's, `sys.path[0]` the script's folder as Python sets it, stdin /dev/null;
- it runs the script as `__main__` and leaves through the interpreter's own exit (atexit
  handlers, non-daemon threads joined, streams flushed), so its exit code, its traceback on an
  uncaught error and its behaviour under signals are those of a plain process.

JAX (and Flax, which imports it) is kept out of the preload: it reads its `JAX_*` settings from
the environment when imported, and each run has its own (devices, cache, optimisations).
TensorFlow only tries to import JAX for TFLite, which then goes without it.

Protocol, one connection per child: the client sends one JSON line {"argv", "env", "cwd",
"stdout", "stderr"}; the server answers "pid <pid>" at once and "exit <code>" when the child
ends (a negative code for a signal, as `subprocess.Popen.returncode`). The server exits when its
stdin (a pipe from the test process) closes.
"""

import importlib.abc
import json
import os
import select
import signal
import socket
import sys


class _DeferJax(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax"):
            raise ImportError(f"{name}: imported by each run, not by the zygote")
        return None


def preload() -> None:
    sys.meta_path.insert(0, _DeferJax())
    try:
        import tensorboard.plugins.hparams.api  # noqa: F401  (Keras, through tf.keras)
        import tensorflow  # noqa: F401
    finally:
        sys.meta_path.pop(0)
    assert not any(name.split(".")[0] in ("jax", "jaxlib", "flax") for name in sys.modules)


def serve(path: str) -> dict:
    """Answers requests until stdin closes; returns only in a forked child, with its request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            os._exit(0)  # The test process is gone; its runs end on their own.
        if listener in readable:
            conn, _ = listener.accept()
            with conn.makefile("r") as f:
                request = json.loads(f.readline())
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in children.values():
                    other.close()
                conn.close()
                return request
            children[pid] = conn
            conn.sendall(f"pid {pid}\n".encode())
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:  # The client stopped listening.
                    pass
                conn.close()


def become(request: dict) -> str:
    """This child turns into `python <script> <args>` as the request describes; the script."""
    # Ctrl-C as in a terminal's foreground command, also when the tests run as a background job
    # (whose shell starts them, and so this server, with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    for fd, name, mode in ((0, os.devnull, os.O_RDONLY),
                           (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(name, mode, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    script, *args = request["argv"]
    sys.argv = [script, *args]
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.path.dirname(os.path.abspath(script)), *extra,
                   *[p for p in sys.path[1:] if p not in extra]]
    return script


if __name__ == "__main__":
    preload()
    script = become(serve(sys.argv[1]))
    import runpy

    runpy.run_path(script, run_name="__main__")
