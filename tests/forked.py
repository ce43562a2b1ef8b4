"""Python commands in processes forked from one that has ftviz's libraries already imported.

A test that runs ``python -m ftviz.cli ...`` in a new process pays ~10 s of imports (torch,
transformers' model classes, cleanlab, openTSNE, scikit-learn) for ~1 s of work, and the kill
tests start a dozen such processes. Here one server process per pytest worker imports those
libraries once, before any of them has started a thread or touched a tensor, and forks a child
for each command: a real, separate process (its own pid, stopped by real signals, its exit
status reported as ``subprocess.run`` reports it) that starts with the imports done.

Two ways in:
- :func:`run` in a test: ``subprocess.run([sys.executable, *args], capture_output=True, ...)``.
- ``python -m tests.forked ARGS`` as a command (what torchrun launches per rank): a small
  client that hands its own stdin/stdout/stderr, working folder and environment to a forked
  child, passes SIGTERM/SIGINT on to it and exits as it did. :func:`command_env` names the server.

Use it for commands whose behaviour does not depend on environment variables that preloaded
libraries read at import time (``HF_HUB_OFFLINE``, ``HF_HOME``, Spotlight's settings): those
need a fresh interpreter, so their tests keep ``subprocess.run``. What ftviz reads when it acts
(``FTVIZ_TEST_KILL_AT``, torch.distributed's ``RANK``/``MASTER_PORT``, ``PYTHONPATH`` for
modules not yet imported) works.

Protocol, over a Unix socket: the client sends one JSON line ``{"argv", "env", "cwd"}`` with its
three standard file descriptors attached (SCM_RIGHTS); the server answers ``{"pid": N}`` when the
child starts and ``{"status": S}`` (``os.waitpid``'s) when it ends.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOCKET_ENV = "FTVIZ_TEST_FORK_SERVER"

# Imported by the server before it forks. Model classes of transformers are lazy: name them.
PRELOAD = (
    "numpy", "pandas", "pyarrow.parquet", "torch", "torch.distributed", "torch.distributed.run",
    "transformers", "transformers.models.vit.modeling_vit", "transformers.models.swin.modeling_swin",
    "transformers.trainer", "sklearn.neighbors", "sklearn.decomposition", "sklearn.linear_model",
    "scipy.linalg", "cleanlab.filter", "cleanlab.outlier", "cleanlab.rank", "openTSNE",
    "ftviz.cli", "ftviz.train", "ftviz.pipeline", "ftviz.stages", "ftviz.quality", "ftviz.detectors",
    "ftviz.project", "ftviz.ingest", "ftviz.embed", "ftviz.render.page", "ftviz.follow",
    "ftviz.models.vit", "ftviz.models.swin", "ftviz.models.hf", "ftviz.integrations.transformers",
)


# ---- the server (its own process) ------------------------------------------------------------
def _serve(path: str) -> None:  # pragma: no cover - runs in the server process
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as error:  # a missing extra only costs its import in the child
            print(f"forked: preload of {name} failed: {error}", file=sys.stderr)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)  # the parent waits for this line
    waiting: dict[int, socket.socket] = {}  # child pid -> its client's connection
    while True:
        clients = {connection: pid for pid, connection in waiting.items()}
        readable, _, _ = select.select([listener, sys.stdin, *clients], [], [], 0.05 if waiting else None)
        if sys.stdin in readable and not sys.stdin.readline():
            return  # the pytest worker is gone
        for connection in clients.keys() & set(readable):
            if not connection.recv(1):  # its client died first: so does the child, and what it started
                _kill_group(clients[connection])
        if listener in readable:
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
            while not message.endswith(b"\n"):
                message += connection.recv(1 << 16)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _child(request, fds)  # never returns
            for fd in fds:
                os.close(fd)
            connection.sendall((json.dumps({"pid": pid}) + "\n").encode())
            waiting[pid] = connection
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = waiting.pop(pid, None)
            if connection is not None:
                try:
                    connection.sendall((json.dumps({"status": status}) + "\n").encode())
                except OSError:
                    pass  # the client went away
                connection.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child(request: dict, fds: list[int]) -> None:  # pragma: no cover - runs in a forked child
    code = 1
    try:
        os.setpgid(0, 0)  # a group of its own: a timeout stops it and what it started
        for fd, passed in zip((0, 1, 2), fds):
            os.dup2(passed, fd)
            os.close(passed)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # as a fresh interpreter starts: Ctrl-C raises KeyboardInterrupt, SIGTERM kills
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [p for p in extra if p not in sys.path]
        import runpy

        argv = request["argv"]
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:  # a script, as `python script.py ARGS`
            sys.argv = list(argv)
            sys.path.insert(0, str(Path(argv[0]).resolve().parent))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as Python does: die of the signal
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    _finish()
    os._exit(code)


def _finish() -> None:  # pragma: no cover - runs in a forked child
    """What the interpreter does on its way out: wait for threads, run atexit, flush."""
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# ---- the pytest worker's side ----------------------------------------------------------------
class _Server:
    """One server per pytest worker (process), started on first use, stopped with the worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.path = ""

    def address(self) -> str:
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                folder = tempfile.mkdtemp(prefix="ftviz-fork-")
                self.path = os.path.join(folder, "socket")
                self.process = subprocess.Popen(
                    [sys.executable, "-c", "import sys; from tests.forked import _serve; _serve(sys.argv[1])",
                     self.path],
                    cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                if self.process.stdout.readline().strip() != "ready":
                    raise RuntimeError("the fork server did not start; see the test's stderr")
                atexit.register(self.process.stdin.close)  # the server exits on end of input
            return self.path


_SERVER = _Server()


def _start(path: str, argv: list[str], env: dict, cwd: str, fds: tuple[int, int, int]) -> tuple[socket.socket, int]:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(path)
    socket.send_fds(connection, [(json.dumps({"argv": argv, "env": env, "cwd": cwd}) + "\n").encode()], list(fds))
    reader = connection.makefile("r")
    pid = json.loads(reader.readline())["pid"]
    return connection, reader, pid


def _status(connection: socket.socket, reader, timeout: float | None = None) -> int:
    connection.settimeout(timeout)
    line = reader.readline()
    if not line:
        raise RuntimeError("the fork server went away")
    return os.waitstatus_to_exitcode(json.loads(line)["status"])


def run(args: list[str], *, env: dict | None = None, cwd=None, timeout: float | None = 600,
        check: bool = False) -> subprocess.CompletedProcess:
    """Like ``subprocess.run([sys.executable, *args], capture_output=True, text=True, ...)``.

    ``args`` is ``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``; ``env`` replaces the
    environment, as subprocess's does.
    """
    command = [sys.executable, *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull) as nothing:
        connection, reader, pid = _start(_SERVER.address(), list(args), dict(os.environ if env is None else env),
                                         str(cwd or os.getcwd()), (nothing.fileno(), out.fileno(), err.fileno()))
        try:
            code = _status(connection, reader, timeout)
        except (socket.timeout, TimeoutError):
            _kill_group(pid)
            _status(connection, reader)
            raise subprocess.TimeoutExpired(command, timeout) from None
        finally:
            connection.close()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, code, out.read().decode(errors="replace"),
                                             err.read().decode(errors="replace"))
    if check:
        result.check_returncode()
    return result


def command_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the server's address, for ``python -m tests.forked``."""
    return {**(os.environ if env is None else env), SOCKET_ENV: _SERVER.address(),
            "PYTHONPATH": os.pathsep.join([str(ROOT), (env or os.environ).get("PYTHONPATH", "")])}


def _client(args: list[str]) -> None:  # pragma: no cover - runs as ``python -m tests.forked``
    env = {key: value for key, value in os.environ.items() if key != SOCKET_ENV}
    connection, reader, pid = _start(os.environ[SOCKET_ENV], args, env, os.getcwd(), (0, 1, 2))

    def forward(number, _frame):  # torchrun stops a rank with SIGTERM: the rank is the child
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, forward)
    code = _status(connection, reader)
    if code < 0:  # died of a signal: so does the client, as torchrun must see it
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    _client(sys.argv[1:])
