"""fdpass.inherit() under a service manager: names, repeats, and malformed LISTEN_* variables.

Each test starts tests/helpers/listen_launcher.py, which puts socketpair
ends on 3, 4, ... and sets LISTEN_* the way systemd does, then executes
tests/helpers/inherit_report.py, which calls inherit() and reports.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
from conftest import HELPERS, clean_environment

NOTHING = (None,)
NOTHING_OR_VALUE_ERROR = (None, "ValueError")
VALUE_ERROR = ("ValueError",)


def launch(children, env, *, passed=2, targets=None, open_first=0, extra_args=(), nonblocking=False):
    """Run inherit_report.py with `passed` socketpair ends on `targets` and env set; return its report."""
    pairs = [socket.socketpair() for _ in range(passed)]
    for first, _ in pairs:
        first.setblocking(not nonblocking)
    targets = list(range(3, 3 + passed)) if targets is None else targets
    try:
        layout = {str(target): pair[0].fileno() for target, pair in zip(targets, pairs, strict=True)}
        config = json.dumps({"layout": layout, "env": env})
        child = children.python(
            HELPERS / "listen_launcher.py",
            config,
            sys.executable,
            HELPERS / "inherit_report.py",
            "--open-first",
            str(open_first),
            *extra_args,
            pass_fds=[pair[0].fileno() for pair in pairs],
        )
        report = child.read_json()
        status, _, stderr = child.finish()
    finally:
        for first, second in pairs:
            first.close()
            second.close()

    assert status == 0, stderr
    assert report["pid"] == child.pid
    return report


def listen_env(count, names=None, pid="$PID"):
    env = {"LISTEN_FDS": count, "LISTEN_PID": pid}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def assert_environment_clean(report):
    assert report["listen_env_left"] == []
    assert report["child_env"] == {"subprocess": [], "system": []}


def test_names_given(children):
    report = launch(children, listen_env("2", "web:admin"))

    assert report["error_type"] is None
    assert [(fd["fd"], fd["name"]) for fd in report["adopted"]] == [(3, "web"), (4, "admin")]
    for fd in report["adopted"]:
        assert fd["kind"] == "socket"
        assert fd["family"] == socket.AF_UNIX
        assert fd["type"] == socket.SOCK_STREAM
        assert fd["object"] == "socket"
        assert fd["object_fd"] == fd["fd"]
    assert_environment_clean(report)


def test_repeated_names(children):
    """result[name] is the first fd with that name and getall(name) every one, in fd order."""
    report = launch(children, listen_env("4", "web:admin:web:web"), passed=4)

    assert [fd["name"] for fd in report["adopted"]] == ["web", "admin", "web", "web"]
    assert report["first_by_name"] == {"web": 3, "admin": 4}
    assert report["all_by_name"] == {"web": [3, 5, 6], "admin": [4]}
    assert report["getall_missing"] == []
    assert report["missing_name_raises"] == "KeyError"


def test_empty_names(children):
    report = launch(children, listen_env("3", ":web:"), passed=3)

    assert [fd["name"] for fd in report["adopted"]] == ["", "web", ""]
    assert report["all_by_name"] == {"": [3, 5], "web": [4]}


def test_single_empty_name(children):
    report = launch(children, listen_env("1", ""), passed=1)

    assert [fd["name"] for fd in report["adopted"]] == [""]


def test_fdnames_missing(children):
    """Without LISTEN_FDNAMES every fd is named "unknown", as under systemd."""
    report = launch(children, listen_env("2"))

    assert [fd["name"] for fd in report["adopted"]] == ["unknown", "unknown"]
    assert report["all_by_name"] == {"unknown": [3, 4]}
    assert_environment_clean(report)


def test_inherit_twice_same_objects(children):
    report = launch(children, listen_env("2", "a:b"))

    assert report["second_call_same"] is True


def test_no_listen_variables(children):
    report = launch(children, {}, passed=0)

    assert report["error_type"] is None
    assert report["adopted"] == []


def test_child_environment_after_reexec(children):
    """reexec() sets LISTEN_* and drops a stale LISTEN_PIDFDID, and inherit() leaves none for child processes."""
    stale = {"LISTEN_PIDFDID": "12345", "LISTEN_FDNAMES": "stale:names"}
    child = children.helper("inherit_report.py", "--restart-first", env=clean_environment(stale))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["pid"] == child.pid
    assert report["listen_env_at_start"] == {
        "LISTEN_FDS": "1",
        "LISTEN_PID": str(child.pid),
        "LISTEN_FDNAMES": "restarted",
    }
    assert [(fd["fd"], fd["name"]) for fd in report["adopted"]] == [(3, "restarted")]
    assert_environment_clean(report)


#: id -> (environment, passed fds, their targets, files opened before inherit(), allowed error types)
MALFORMED = {
    "count non-numeric": (listen_env("two", "a:b"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count negative": (listen_env("-1"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count with plus sign": (listen_env("+2", "a:b"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count with spaces": (listen_env(" 2 ", "a:b"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count empty": (listen_env(""), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count huge": (listen_env("99999999999999999999999"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count above fd limit": (listen_env("2000000"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "count above open fds": (listen_env("5", "a:b:c:d:e"), 2, None, 0, VALUE_ERROR),
    "count zero": (listen_env("0"), 2, None, 0, NOTHING),
    "more names than fds": (listen_env("2", "a:b:c"), 2, None, 0, VALUE_ERROR),
    "fewer names than fds": (listen_env("2", "a"), 2, None, 0, VALUE_ERROR),
    "declared fd closed": (listen_env("3", "a:b:c"), 2, [3, 5], 0, VALUE_ERROR),
    "declared fd has FD_CLOEXEC": (listen_env("1", "mine"), 0, [], 1, VALUE_ERROR),
    "second fd has FD_CLOEXEC": (listen_env("2", "a:mine"), 1, [3], 1, VALUE_ERROR),
    "pid of another process": (listen_env("2", "a:b", pid="1"), 2, None, 0, NOTHING),
    "pid non-numeric": (listen_env("2", "a:b", pid="self"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "pid negative": (listen_env("2", "a:b", pid="-5"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "pid empty": (listen_env("2", "a:b", pid=""), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "pid missing": ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, 2, None, 0, NOTHING),
    "fds missing": ({"LISTEN_PID": "$PID", "LISTEN_FDNAMES": "a:b"}, 2, None, 0, NOTHING),
    "name with control character": (listen_env("2", "a\tb:c"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
    "name too long": (listen_env("2", "a" * 300 + ":b"), 2, None, 0, NOTHING_OR_VALUE_ERROR),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_listen_variables(children, case):
    """Malformed LISTEN_* adopt nothing or raise ValueError, and never adopt an fd that was not passed."""
    env, passed, targets, open_first, allowed = MALFORMED[case]
    targets = list(range(3, 3 + passed)) if targets is None else targets

    report = launch(children, env, passed=passed, targets=targets, open_first=open_first)

    assert report["error_type"] in allowed, report
    adopted_fds = [fd["fd"] for fd in report["adopted"]]
    assert set(adopted_fds) <= set(targets)
    assert not set(adopted_fds) & set(report["opened_first"])
    if report["error_type"] is not None:
        assert adopted_fds == []
        assert report["message"]
        assert report["second_error"] == [report["error_type"], report["message"]]
    assert_environment_clean(report)


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("count above open fds", "LISTEN_FDS=5"),
        ("more names than fds", "LISTEN_FDNAMES"),
        ("declared fd closed", "fd 4"),
        ("declared fd has FD_CLOEXEC", "FD_CLOEXEC"),
        ("count non-numeric", "'two'"),
    ],
)
def test_malformed_message_names_variable(children, case, named):
    env, passed, targets, open_first, _ = MALFORMED[case]

    report = launch(children, env, passed=passed, targets=targets, open_first=open_first)

    if report["error_type"] is not None:
        assert named in report["message"]


SOCKET_NAMED_STATE_PROGRAM = r"""
import json, fdpass
state = fdpass.inherited_state()
sock = fdpass.inherit()["fdpass-state"]
print(json.dumps({"state": state, "family": int(sock.family), "open": sock.fileno() != -1}), flush=True)
"""


def test_socket_named_state_is_not_read_as_state(children):
    """A socket that a service manager passed under the name fdpass-state is not read or closed by inherited_state()."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        config = json.dumps({"layout": {"3": listener.fileno()}, "env": listen_env("1", "fdpass-state")})
        child = children.python(
            HELPERS / "listen_launcher.py",
            config,
            sys.executable,
            "-c",
            SOCKET_NAMED_STATE_PROGRAM,
            pass_fds=[listener.fileno()],
        )
        report = child.read_json()
        status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report == {"state": None, "family": socket.AF_INET, "open": True}


SERVICE_MANAGER_FILES_PROGRAM = r"""
import json, os, fdpass
upgrader = fdpass.Upgrader()
has_parent = upgrader.has_parent
upgrader.ready()
still_open = [fd for fd in (3, 4) if os.fstat(fd)]
upgrader.stop()
print(json.dumps({"has_parent": has_parent, "open": still_open}), flush=True)
"""


def open_file_and_memfd(tmp_path):
    return os.open(tmp_path / "parent", os.O_RDONLY | os.O_CREAT), os.memfd_create("manager", 0)


def open_pipe_ends_reversed(tmp_path):
    read_end, write_end = os.pipe()
    return write_end, read_end


@pytest.mark.parametrize("open_fds", [open_file_and_memfd, open_pipe_ends_reversed])
def test_service_manager_fds_are_not_upgrade_pipes(children, tmp_path, open_fds):
    """A file, memfd or wrong pipe end under fdpass-parent or fdpass-ready stays the program's, not the Upgrader's."""
    parent_fd, ready_fd = open_fds(tmp_path)
    try:
        config = json.dumps(
            {"layout": {"3": parent_fd, "4": ready_fd}, "env": listen_env("2", "fdpass-parent:fdpass-ready")}
        )
        child = children.python(
            HELPERS / "listen_launcher.py",
            config,
            sys.executable,
            "-c",
            SERVICE_MANAGER_FILES_PROGRAM,
            pass_fds=[parent_fd, ready_fd],
        )
        report = child.read_json()
        status, _, stderr = child.finish()
    finally:
        os.close(parent_fd)
        os.close(ready_fd)

    assert status == 0, stderr
    assert report == {"has_parent": False, "open": [3, 4]}
    assert "inherited fd 3 named 'fdpass-parent' is not one that fdpass passes under that name" in stderr
    assert "inherited fd 4 named 'fdpass-ready' is not one that fdpass passes under that name" in stderr
