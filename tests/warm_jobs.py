"""Jobs for tests/test_warm.py to run in a warm-start zygote's child (``entry`` of harness.warm.client)."""

import os
import sys
import time


def echo(argv):
    print("out", " ".join(argv), os.getcwd(), os.environ.get("WARM_TEST"), os.getpid(), os.getppid())
    print("err", file=sys.stderr)
    return int(argv[0])


def crash(argv):
    raise RuntimeError("boom")


def sleep(argv):
    with open(argv[0], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
    return 0


def killed(argv):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
