"""The environment reexec() builds when env is None, from os.environ's bytes, and the C range check inherit() uses."""

from __future__ import annotations

import fcntl
import os

from fdpass import _native

ENVIRONMENT_PROGRAM = r"""
import json, os, socket, sys, fdpass
if "FDPASS_TEST_ADDED" in os.environ:
    report = {
        "added": os.environ.get("FDPASS_TEST_ADDED"),
        "removed": os.environ.get("FDPASS_TEST_REMOVED"),
        "raw": os.environb.get(b"FDPASS_TEST_RAW", b"").hex(),
        "stale": os.environ.get("LISTEN_PIDFDID"),
        "listen_fds": os.environ.get("LISTEN_FDS"),
        "listen_pid": os.environ.get("LISTEN_PID"),
        "names": os.environ.get("LISTEN_FDNAMES"),
        "sockets": "FDPASS_SOCKETS" in os.environ,
    }
    inherited = fdpass.inherit()
    report["inherited"] = sorted(inherited)
    report["left"] = sorted(name for name in os.environ if name.startswith("LISTEN_") or name == "FDPASS_SOCKETS")
    print(json.dumps(report), flush=True)
    sys.exit(0)
listener = socket.create_server(("127.0.0.1", 0))
os.environ["FDPASS_TEST_ADDED"] = "added after start"
del os.environ["FDPASS_TEST_REMOVED"]
os.environb[b"FDPASS_TEST_RAW"] = b"\xff\xfe not UTF-8"
# A stale variable from an earlier service manager, which reexec() must drop.
os.environ["LISTEN_PIDFDID"] = "12345"
fdpass.reexec({"web": listener})
"""


def test_reexec_passes_current_environment(children):
    """Changes to os.environ and os.environb reach the new run; stale LISTEN_* variables do not."""
    child = children.python(
        "-c", ENVIRONMENT_PROGRAM, env={**os.environ, "FDPASS_TEST_REMOVED": "set at start"}
    )
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report == {
        "added": "added after start",
        "removed": None,
        "raw": b"\xff\xfe not UTF-8".hex(),
        "stale": None,
        "listen_fds": "1",
        "listen_pid": str(child.pid),
        "names": "web",
        "sockets": True,
        "inherited": ["web"],
        "left": [],
    }


REPLACED_ENVIRON_PROGRAM = r"""
import json, os, socket, sys, fdpass
if "FDPASS_TEST_REPLACED" in os.environ:
    print(json.dumps({"replaced": os.environ["FDPASS_TEST_REPLACED"], "fds": os.environ.get("LISTEN_FDS")}))
    sys.exit(0)
listener = socket.create_server(("127.0.0.1", 0))
# What mock.patch("os.environ", new=...) does: os.environ is now a plain dict.
os.environ = dict(os.environ, FDPASS_TEST_REPLACED="yes")
fdpass.reexec([listener])
"""


def test_reexec_uses_replaced_environ(children):
    """A program that replaced os.environ with another mapping restarts with that mapping's variables."""
    child = children.python("-c", REPLACED_ENVIRON_PROGRAM)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report == {"replaced": "yes", "fds": "1"}


def test_all_adoptable_range():
    """The range check accepts open fds with FD_CLOEXEC clear and rejects a closed or close-on-exec one."""
    read_end, write_end = os.pipe()
    base = 900
    try:
        os.dup2(read_end, base)
        os.dup2(write_end, base + 1)

        assert _native.all_adoptable_range(base, 2) is True
        assert _native.all_adoptable_range(base, 0) is True

        fcntl.fcntl(base + 1, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        assert _native.all_adoptable_range(base, 2) is False
        assert _native.all_adoptable_range(base, 1) is True

        os.close(base + 1)
        assert _native.all_adoptable_range(base, 2) is False
    finally:
        for fd in (read_end, write_end, base, base + 1):
            try:
                os.close(fd)
            except OSError:
                pass
