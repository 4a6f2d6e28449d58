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
- the **zygote** imports the libraries once (no Vulkan or CUDA context, which a forked child
  could not use; after the imports it runs two threads here, its own and jemalloc's
  fork-aware background thread), then forks a child per request. The child takes the client's
  folder, environment and descriptors and runs ``harness.cli.main`` in its own process group;
  so every job is still its own process, with its own memory and crash. What the libraries read
  from the environment at import (thread counts, offline mode) is the zygote's: those variables
  are part of its key, so a job that sets them otherwise gets another zygote. If the client goes
  away (Snakemake cancelled the job), the job's process group is killed; if the zygote dies, its
  jobs die with it. The zygote exits after ``IDLE_SECONDS`` without a job.

A zygote serves one checkout, one interpreter and one state of the code: its socket's name is a
hash of those and of every ``.py`` file's size and modification time under ``harness/`` and
``methods/``, so after an edit the next job starts a new zygote (and the old one idles out).

What it does not keep: a Vulkan context (it cannot cross a fork), so each job makes its own
renderer. The costly part of that, SAPIEN's BRDF lookup table (about 10 s on lavapipe), is
computed once per machine and handed to every camera (harness/brdf_lut.py). Snakemake's ``benchmark:`` files measure the client, so their CPU time and memory
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
# what the adapters import lazily, inside functions (diffusers and transformers import a class's
# module at first access): resolved once by the zygote, ~4 s a job otherwise (RDT, PAR, DP)
PRELOAD_ATTRS = {
    "diffusers": ("AutoencoderKL", "DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                  "FlowMatchEulerDiscreteScheduler"),
    "transformers": ("AutoConfig", "AutoTokenizer", "ByT5Tokenizer", "PhiConfig", "PhiModel", "SiglipImageProcessor",
                     "SiglipVisionConfig", "SiglipVisionModel", "T5Config", "T5EncoderModel"),
    "scipy.stats": ("fisher_exact", "binomtest"),
}
_HEADER = struct.Struct("!I")


def runtime_dir() -> Path:
    """Where the sockets live: $XDG_RUNTIME_DIR, else a private folder under the temp dir."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join("/tmp", f"harness-warm-{os.getuid()}")
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:  # another user's folder could hold a socket of theirs
        raise OSError(f"{path} is not a private folder of this user")
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
    # variables the preloaded libraries read once, at import: a job wanting others needs another zygote
    for var in ("PYTHONPATH", "VK_ICD_FILENAMES", "CUDA_VISIBLE_DEVICES", "HF_HOME", "HF_HUB_OFFLINE",
                "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "PYTHONWARNINGS"):
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
        with open(str(path) + ".log", "ab") as log:
            zygote = subprocess.Popen([sys.executable, "-m", "harness.warm", "--serve", str(path)], cwd=str(ROOT),
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while zygote.poll() is None:  # preloading; a zygote that died gives up at once
            conn = _connect(path)
            if conn is not None:
                return conn
            if time.monotonic() > deadline:
                zygote.kill()
                break
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
            try:
                _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "entry": entry}, [0, 1, 2])
                conn.settimeout(START_TIMEOUT)
                started = _recv_exact(conn, 1)
                conn.settimeout(None)
            except OSError:  # reset or timed out before the job started: nothing ran
                started = None
            if started is None:
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
    if len(msg) < 4:
        for fd in fds:
            os.close(fd)
        raise OSError("client closed before its request")
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
        for obj in inherited:  # the zygote's listener, selector and every client's connection
            obj.close()
        os.setpgid(0, 0)  # its own process group: a cancel reaches the job's subprocesses too
        _die_with_parent()
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
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:  # as Python prints SystemExit("message")
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 -- the job's traceback goes to its own stderr
        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # what a normal interpreter exit runs (os._exit skips it)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the zygote dies (its client could no longer cancel it)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the zygote died before the signal was set
        os._exit(1)


def serve(path: Path, idle_seconds: float = IDLE_SECONDS) -> None:
    """The zygote: preload, listen on ``path``, fork a child per request, exit when idle."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- a missing optional library is imported by the job, if at all
            print(f"warm: not preloaded: {name} ({exc})", file=sys.stderr, flush=True)
    for name, attrs in PRELOAD_ATTRS.items():
        for attr in attrs:
            try:
                getattr(importlib.import_module(name), attr)
            except Exception as exc:  # noqa: BLE001 -- the job resolves it, if it needs it
                print(f"warm: not preloaded: {name}.{attr} ({exc})", file=sys.stderr, flush=True)
    try:  # every training or evaluation job imports one adapter and checks its method identity
        from harness.provenance import preload_identities
        from harness.registry import list_methods

        for entry in list_methods(load_variants=False):  # not other packages' (the key does not see their edits)
            if entry.source == "built-in":
                importlib.import_module(entry.target.split(":")[0])
        preload_identities()  # parses the methods' files here, once
    except Exception as exc:  # noqa: BLE001 -- a job then imports and parses what it needs itself
        print(f"warm: methods not preloaded ({exc})", file=sys.stderr, flush=True)
    # the preloaded modules' objects live as long as the zygote: out of the collector's sight,
    # every gc.collect of a job (ManiSkill collects at each reset and close) skips them, ~0.3 s
    # each here, and the children's pages stay shared
    import gc

    gc.collect()
    gc.freeze()
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
                    fds = []
                    try:
                        conn.settimeout(5.0)  # a stalled client must not stop the others
                        request, fds = _recv_request(conn)
                        conn.settimeout(None)
                        if len(fds) != 3:
                            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
                    except Exception:  # noqa: BLE001 -- a client that died mid-request: drop it, serve on
                        for fd in fds:
                            os.close(fd)
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(request, fds, [listener, sel, conn, *jobs.values()])
                    for fd in fds:
                        os.close(fd)
                    try:
                        conn.sendall(b"\x01")  # started: from here on the client must not retry
                    except OSError:
                        os.kill(pid, signal.SIGTERM)
                    jobs[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                elif key.data in jobs:  # the client closed its end: its job is cancelled
                    try:
                        os.killpg(key.data, signal.SIGTERM)  # the job and its subprocesses
                    except OSError:
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
