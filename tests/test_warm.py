"""The warm-start zygote (harness/warm.py): a job runs in a forked child with the client's folder,
environment, streams and exit status; a crash stays the job's; a cancelled client's job dies; a
code change means another zygote; the harness's own CLI runs through it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT
from harness.warm import state_key


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """A private socket folder; its zygotes exit once their sockets are gone."""
    folder = tmp_path_factory.mktemp("warm-runtime")
    yield folder
    for sock in folder.glob("*.sock"):
        sock.unlink()


def _client(runtime, entry, *argv, cwd, **popen):
    code = "import sys; from harness.warm import client; entry = sys.argv.pop(1); sys.exit(client(sys.argv[1:], entry))"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), WARM_TEST="from-the-client", PYTHONPATH=f"{REPO_ROOT}:{REPO_ROOT / 'tests'}")
    return subprocess.Popen([sys.executable, "-c", code, entry, *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _run(runtime, entry, *argv, cwd):
    proc = _client(runtime, entry, *argv, cwd=cwd)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_a_job_runs_in_a_forked_child_of_one_zygote_as_the_client_would(runtime, tmp_path):
    rc, out, err = _run(runtime, "warm_jobs:echo", "3", "a", "b", cwd=tmp_path)
    assert rc == 3 and err.strip().endswith("err"), (rc, out, err)
    word, *args, cwd, env, pid, parent = out.split()
    assert (word, args, cwd, env) == ("out", ["3", "a", "b"], str(tmp_path), "from-the-client")
    rc, out, _ = _run(runtime, "warm_jobs:echo", "0", cwd=tmp_path)
    *_, pid2, parent2 = out.split()
    assert rc == 0 and parent2 == parent and pid2 != pid  # the same zygote forked another child
    assert len(list(runtime.glob("zygote-*.sock"))) == 1


def test_a_crash_is_the_jobs_own(runtime, tmp_path):
    rc, _, err = _run(runtime, "warm_jobs:crash", cwd=tmp_path)
    assert rc == 1 and "RuntimeError: boom" in err
    assert _run(runtime, "warm_jobs:echo", "0", cwd=tmp_path)[0] == 0


def test_cancelling_the_client_kills_its_job(runtime, tmp_path):
    pid_file = tmp_path / "job.pid"
    proc = _client(runtime, "warm_jobs:sleep", str(pid_file), cwd=tmp_path)
    deadline = time.time() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    job = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while Path(f"/proc/{job}").exists() and "Z" not in Path(f"/proc/{job}/stat").read_text().split()[2]:
        assert time.time() < deadline, "the cancelled job still runs"
        time.sleep(0.1)


def test_the_harness_cli_runs_through_it(runtime, tmp_path):
    rc, out, err = _run(runtime, "harness.cli:main", "table", "--help", cwd=tmp_path)
    assert rc == 0 and "compile a results table" not in err and "--table" in out
    rc, _, err = _run(runtime, "harness.cli:main", "no-such-step", cwd=tmp_path)
    assert rc == 2 and "invalid choice" in err


def test_another_state_of_the_code_is_another_zygote(tmp_path):
    for folder in ("harness", "methods"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    before = state_key(tmp_path)
    assert state_key(tmp_path) == before
    os.utime(tmp_path / "methods" / "a.py", ns=(0, 10**9))
    assert state_key(tmp_path) != before


def test_a_client_gone_before_its_request_leaves_the_zygote_serving(runtime, tmp_path):
    import socket

    *_, first = _run(runtime, "warm_jobs:echo", "0", cwd=tmp_path)[1].split()
    (sock,) = runtime.glob("zygote-*.sock")
    for _ in range(2):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.close()  # connected, then died: nothing sent
    rc, out, _ = _run(runtime, "warm_jobs:echo", "0", cwd=tmp_path)
    assert rc == 0 and out.split()[-1] == first  # the same zygote forked it


def test_a_job_killed_by_a_signal_exits_as_a_shell_says(runtime, tmp_path):
    assert _run(runtime, "warm_jobs:killed", cwd=tmp_path)[0] == 128 + 9
