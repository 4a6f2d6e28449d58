"""Warm start for many short jobs: a zygote process that has already imported the heavy libraries
forks one child per ``python -m harness`` command.

A smoke-scale job does seconds of work after seconds of start-up: importing torch, torchvision,
ManiSkill, LeRobot, diffusers and transformers costs each of the DAG's ~90 processes about as
much as its own work (``benchmarks/smoke_dag.py`` measures the DAG). With
``compute.warm_start: true`` (the smoke config) the workflow runs every harness step as
``python -m harness.warm <args>``:

- the **client** (this module, standard library only) connects to the zygote of this checkout
  and hands it its arguments, working folder, environment and its stdin/stdout/stderr (file
  descriptors passed over a Unix socket, so the job's ``> {log} 2>&1`` still holds), then waits
  for the exit status and exits with it. No zygote listening: it starts one, and if that fails
  for any reason it runs the command itself, in this process, as ``python -m harness`` would.
- the **zygote** imports the libraries once (nothing that starts threads or a Vulkan/CUDA
  context: a forked child could not use those), then forks a child per request. The child takes
  the client's folder, environment and descriptors and runs ``harness.cli.main``; so every job is
  still its own process, with its own memory and crash, and nothing of one job reaches the next.
  If the client goes away (Snakemake cancelled the job), the child is killed. The zygote exits
  after ``IDLE_SECONDS`` without a job.

A zygote serves one checkout, one interpreter and one state of the code: its socket's name is a
hash of those and of every ``.py`` file's size and modification time under ``harness/`` and
``methods/``, so after an edit the next job starts a new zygote (and the old one idles out).

What it does not keep: the cost of the first render. SAPIEN computes a 512x512 BRDF lookup table
on the first image of every process (about 10 s on lavapipe here), and a Vulkan context cannot
cross a fork. Snakemake's ``benchmark:`` files measure the client, so their CPU time and memory
are not the job's; the wall time is. The reduced and paper scales therefore run without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDLE_SECONDS = 120.0
START_TIMEOUT = 120.0
# imported once by the zygote: what nearly every harness step imports (none starts a thread,
# a render or a CUDA context at import)
PRELOAD = ("numpy", "torch", "torchvision", "gymnasium", "mani_skill.envs", "h5py", "harness.cli",
           "harness.train", "harness.evaluate", "harness.dataset", "lerobot.policies.act.modeling_act",
           "diffusers", "transformers")
_HEADER = struct.Struct("!I")


def runtime_dir() -> Path:
    """Where the sockets live: $XDG_RUNTIME_DIR, else a private folder under the temp dir."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join("/tmp", f"harness-warm-{os.getuid()}")
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def state_key(root: Path = ROOT) -> str:
    """A hash of the interpreter, the checkout and the size and mtime of its Python code."""
    h = hashlib.sha256(f"{sys.executable}\0{root}\0".encode())
    for folder in ("harness", "methods"):
        for path in sorted((root / folder).rglob("*.py")):
            st = path.stat()
            h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    import sysconfig

    purelib = Path(sysconfig.get_paths()["purelib"])  # its mtime moves when a package is (un)installed
    h.update(f"{purelib}\0{purelib.stat().st_mtime_ns if purelib.exists() else 0}\0".encode())
    for var in ("PYTHONPATH", "VK_ICD_FILENAMES", "CUDA_VISIBLE_DEVICES", "HF_HOME"):
        h.update(f"{var}={os.environ.get(var, '')}\0".encode())
    return h.hexdigest()[:16]


def socket_path(key: str | None = None) -> Path:
    return runtime_dir() / f"zygote-{key or state_key()}.sock"


# --- client ----------------------------------------------------------------------------------

def _connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:
        s.close()
        return None


def _start_zygote(path: Path) -> socket.socket | None:
    """Start a zygote for ``path`` (one at a time: a lock file) and connect to it."""
    import fcntl

    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is not None:  # another client started it while we waited
            return conn
        log = open(str(path) + ".log", "ab")
        subprocess.Popen([sys.executable, "-m", "harness.warm", "--serve", str(path)], cwd=str(ROOT),
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            conn = _connect(path)
            if conn is not None:
                return conn
            time.sleep(0.1)
    return None


def _send(conn: socket.socket, payload: dict, fds: list[int]) -> None:
    data = json.dumps(payload).encode()
    socket.send_fds(conn, [_HEADER.pack(len(data)) + data], fds)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def client(argv: list[str], entry: str = "harness.cli:main") -> int:
    """Run ``python -m harness <argv>`` in a child of the zygote; return its exit status.

    ``entry`` (``module:function``, called with ``argv``) is what the child runs; tests name others."""
    for _ in range(2):
        try:
            path = socket_path()
            conn = _connect(path) or _start_zygote(path)
        except OSError:
            conn = None
        if conn is None:
            break
        with conn:
            _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "entry": entry}, [0, 1, 2])
            if _recv_exact(conn, 1) is None:
                continue  # the zygote closed before forking (it was going idle): nothing ran; again
            # SIGTERM / SIGINT end this client; the zygote sees the socket close and kills the job
            code = _recv_exact(conn, 4)
            if code is None:
                print("error: the warm-start zygote went away while the job ran "
                      f"(its log: {path}.log)", file=sys.stderr)
                return 1
            return struct.unpack("!i", code)[0]
    return _run_here(argv, entry)


def _entry(entry: str):
    import importlib

    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(module), function)


def _run_here(argv: list[str], entry: str = "harness.cli:main") -> int:
    return _entry(entry)(argv)


# --- zygote ----------------------------------------------------------------------------------

def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    (size,) = _HEADER.unpack(msg[:4])
    data = msg[4:]
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("client closed mid-request")
        data += chunk
    return json.loads(data), list(fds)


def _child(request: dict, fds: list[int], inherited: list) -> None:
    """In the forked child: become the client's job, run it, exit with its status."""
    code = 1
    try:
        for obj in inherited:  # the zygote's listener, selector and other jobs' connections
            obj.close()
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["harness", *request["argv"]]
        code = int(_entry(request.get("entry", "harness.cli:main"))(request["argv"]) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 -- the job's traceback goes to its own stderr
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def serve(path: Path, idle_seconds: float = IDLE_SECONDS) -> None:
    """The zygote: preload, listen on ``path``, fork a child per request, exit when idle."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- a missing optional library is imported by the job, if at all
            print(f"warm: not preloaded: {name} ({exc})", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = path.with_name(path.name + f".{os.getpid()}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, path)  # clients see the socket only once it accepts
    inode = os.stat(path).st_ino
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    jobs: dict[int, socket.socket] = {}  # child pid -> its client's connection
    last = time.monotonic()
    try:
        while True:
            for key, _ in sel.select(timeout=0.2):
                if key.data is None:
                    conn, _ = listener.accept()
                    try:
                        request, fds = _recv_request(conn)
                    except (OSError, ValueError):
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(request, fds, [listener, sel, *jobs.values()])
                    for fd in fds:
                        os.close(fd)
                    try:
                        conn.sendall(b"\x01")  # started: from here on the client must not retry
                    except OSError:
                        os.kill(pid, signal.SIGTERM)
                    jobs[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                elif key.data in jobs:  # the client closed its end: its job is cancelled
                    os.kill(key.data, signal.SIGTERM)
                    sel.unregister(key.fileobj)
            while jobs:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = jobs.pop(pid, None)
                if conn is not None:
                    code = os.waitstatus_to_exitcode(status)
                    try:
                        conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
                    except OSError:
                        pass
                    try:
                        sel.unregister(conn)
                    except (KeyError, ValueError):
                        pass
                    conn.close()
                last = time.monotonic()
            if not jobs and (time.monotonic() - last > idle_seconds or not _ours(path, inode)):
                return  # idle, or the socket was removed or replaced: no job is running
    finally:
        if _ours(path, inode):
            path.unlink(missing_ok=True)
        listener.close()


def _ours(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]))
    else:
        raise SystemExit(client(sys.argv[1:]))
