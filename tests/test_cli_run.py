"""``fdpass run`` without --restart-on: bind, then exec COMMAND in the same process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import HELPERS, clean_environment
from loadgen import socket_activation


def connect_with_retry(address: tuple[str, int], attempts: int = 200) -> socket.socket:
    """Connect to address, retrying for up to attempts * 50 ms while nothing listens yet."""
    for _ in range(attempts - 1):
        try:
            return socket.create_connection(address, timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.05)
    return socket.create_connection(address, timeout=10)


def fdpass_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "fdpass", "run", *args]


def test_run_execs_with_listen_fds(children, tmp_path):
    """COMMAND runs in fdpass's own process with each socket on 3, 4, ... and LISTEN_* set."""
    path = str(tmp_path / "stream.sock")
    abstract = f"fdpass-test-{os.getpid()}"
    child = children.start(fdpass_run(
        "--listen", "web=127.0.0.1:0",
        "--listen", "dns=udp:[::1]:0",
        "--listen", f"unix:{path}",
        "--listen", f"ctl=unix-seqpacket:@{abstract}",
        "--", sys.executable, str(HELPERS / "report_listen_fds.py"),
    ))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["pid"] == child.pid
    assert report["env"]["LISTEN_PID"] == str(child.pid)
    assert report["env"]["LISTEN_FDS"] == "4"
    assert report["env"]["LISTEN_FDNAMES"] == "web:dns:unknown:ctl"
    web, dns, stream, ctl = report["sockets"]
    assert (web["fd"], web["family"], web["type"], web["listening"]) == (3, socket.AF_INET, socket.SOCK_STREAM, True)
    assert web["address"][0] == "127.0.0.1"
    assert (dns["fd"], dns["family"], dns["type"]) == (4, socket.AF_INET6, socket.SOCK_DGRAM)
    assert (stream["fd"], stream["family"], stream["address"]) == (5, socket.AF_UNIX, path)
    assert (ctl["fd"], ctl["type"], ctl["address"]) == (6, socket.SOCK_SEQPACKET, "\0" + abstract)
    assert ctl["listening"] is True


def test_run_exits_with_command_status(children):
    """fdpass run exits with the status of the command it became."""
    report_and_exit_7 = [sys.executable, str(HELPERS / "report_listen_fds.py"), "7"]
    child = children.start(fdpass_run("-l", "127.0.0.1:0", "--", *report_and_exit_7))
    child.read_json()

    assert child.wait() == 7


def test_console_script_is_installed():
    """The fdpass console script sits next to the interpreter and shows help for run."""
    script = shutil.which("fdpass", path=os.path.dirname(sys.executable))
    assert script is not None

    result = subprocess.run([script, "run", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "--listen [NAME=]ADDRESS" in result.stdout
    assert "default: SOMAXCONN" in result.stdout


def test_port_in_use_is_reported(children):
    """A port that another socket listens on gives exit 1 and a message naming the address."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        child = children.start(fdpass_run("-l", f"127.0.0.1:{port}", "--", "true"))
        status, _, stderr = child.finish()

    assert status == 1
    assert f"127.0.0.1:{port}: address already in use" in stderr
    assert "choose another address" in stderr


def test_port_held_by_earlier_listen_is_reported(children):
    """A wildcard --listen on the port of an earlier --listen names that socket, not another program."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    child = children.start(fdpass_run("-l", f"127.0.0.1:{port}", "-l", f"0.0.0.0:{port}", "--", "true"))
    status, _, stderr = child.finish()

    assert status == 1
    assert f"--listen 0.0.0.0:{port}: cannot bind" in stderr
    assert "from an earlier listen()" in stderr
    assert "stop the program that listens there" not in stderr


def test_unix_path_not_socket_is_reported(children, tmp_path):
    """A --listen path that is a regular file gives exit 1 and a "not a socket" message."""
    path = tmp_path / "plain.txt"
    path.write_text("not a socket\n")
    child = children.start(fdpass_run("-l", f"unix:{path}", "--", "true"))
    status, _, stderr = child.finish()

    assert status == 1
    assert f"unix:{path}:" in stderr
    assert "the path exists and is not a socket" in stderr
    assert "address already in use" not in stderr
    assert path.read_text() == "not a socket\n"


def test_unix_path_in_use_is_reported(children, tmp_path):
    """A --listen path that another process accepts on gives exit 1 and a message naming that."""
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        child = children.start(fdpass_run("-l", f"unix:{path}", "--", "true"))
        status, _, stderr = child.finish()

    assert status == 1
    assert f"unix:{path}:" in stderr
    assert "another process is accepting connections on it" in stderr


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:99999", "port 99999 is out of range"),
    ("localhost", "missing port"),
    ("::1:80", "needs brackets"),
])
def test_malformed_address_is_reported(children, value, expected):
    """A malformed --listen value gives exit 2 and a message quoting it."""
    child = children.start(fdpass_run("-l", value, "--", "true"))
    status, _, stderr = child.finish()

    assert status == 2
    assert repr(value) in stderr
    assert expected in stderr


def test_command_not_found_is_reported(children):
    """A command missing from PATH gives exit 127 and a message naming it."""
    child = children.start(fdpass_run("-l", "127.0.0.1:0", "--", "fdpass-no-such-command"))
    status, _, stderr = child.finish()

    assert status == 127
    assert "'fdpass-no-such-command' not found in PATH" in stderr


def test_command_not_executable_is_reported(children, tmp_path):
    """A command file without the execute bit gives exit 126 and suggests chmod +x."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    child = children.start(fdpass_run("-l", "127.0.0.1:0", "--", str(script)))
    status, _, stderr = child.finish()

    assert status == 126
    assert "chmod +x" in stderr


def test_missing_command_is_reported(children):
    """fdpass run with no COMMAND gives exit 2."""
    child = children.start(fdpass_run("-l", "127.0.0.1:0"))
    status, _, stderr = child.finish()

    assert status == 2
    assert "missing COMMAND" in stderr


@pytest.mark.parametrize("option", [["--ready", "5"], ["--ready-timeout", "5"], ["--stop-timeout", "5"]])
def test_supervisor_option_without_restart_on(children, option):
    """A supervisor-only option without --restart-on gives exit 2 naming the option."""
    child = children.start(fdpass_run("-l", "127.0.0.1:0", *option, "--", "true"))
    status, _, stderr = child.finish()

    assert status == 2
    assert f"{option[0]} applies only to the supervisor" in stderr


def test_repeated_address_is_reported(children):
    """The same address given twice gives exit 2 naming both values."""
    address = f"unix:@fdpass-test-repeat-{os.getpid()}"
    child = children.start(fdpass_run("-l", f"a={address}", "-l", f"b={address}", "--", "true"))
    status, _, stderr = child.finish()

    assert status == 2
    assert "repeats the address" in stderr


def test_unnamed_port_zero_twice_binds_two_sockets(children):
    """Two unnamed --listen values with port 0 get two ports, both passed as "unknown"."""
    report_command = [sys.executable, str(HELPERS / "report_listen_fds.py")]
    child = children.start(fdpass_run("-l", "127.0.0.1:0", "-l", "127.0.0.1:0", "--", *report_command))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["env"]["LISTEN_FDNAMES"] == "unknown:unknown"
    ports = {entry["address"][1] for entry in report["sockets"]}
    assert len(ports) == 2


def test_run_adopts_socket_from_systemd_socket_activate(children):
    """Under systemd-socket-activate, fdpass run reuses the passed socket instead of binding again."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    with socket.create_server(("127.0.0.1", 0)) as passed:
        port = passed.getsockname()[1]
        argv, env = socket_activation(passed, [
            activate, "--fdname", "web",
            *fdpass_run("-l", f"http=127.0.0.1:{port}", "--", sys.executable, str(HELPERS / "report_listen_fds.py")),
        ])
        child = children.start(argv, env=clean_environment(env), pass_fds=(passed.fileno(),))
    # systemd 252's systemd-socket-activate starts the command on the first connection.
    with connect_with_retry(("127.0.0.1", port)):
        report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["env"]["LISTEN_FDNAMES"] == "http"
    assert report["sockets"][0]["address"] == ["127.0.0.1", port]


def test_unnamed_listen_keeps_inherited_name(children):
    """An unnamed --listen that reuses an inherited socket logs and passes the name that socket came with."""
    with socket.create_server(("127.0.0.1", 0)) as passed:
        port = passed.getsockname()[1]
        report_command = [sys.executable, str(HELPERS / "report_listen_fds.py")]
        argv, env = socket_activation(passed, [*fdpass_run("-v", "-l", f"127.0.0.1:{port}", "--", *report_command)])
        env["LISTEN_FDNAMES"] = "web"
        child = children.start(argv, env=clean_environment(env), pass_fds=(passed.fileno(),))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert f"listening on 127.0.0.1:{port} as fd 3, named 'web'" in stderr
    assert report["env"]["LISTEN_FDNAMES"] == "web"
    assert report["sockets"][0]["address"] == ["127.0.0.1", port]


def test_reserved_inherited_name_becomes_unknown(children):
    """A socket passed under a name that fdpass reserves is reused and passed on as "unknown"."""
    with socket.create_server(("127.0.0.1", 0)) as passed:
        port = passed.getsockname()[1]
        report_command = [sys.executable, str(HELPERS / "report_listen_fds.py")]
        argv, env = socket_activation(passed, [*fdpass_run("-v", "-l", f"127.0.0.1:{port}", "--", *report_command)])
        env["LISTEN_FDNAMES"] = "fdpass-web"
        child = children.start(argv, env=clean_environment(env), pass_fds=(passed.fileno(),))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["env"]["LISTEN_FDNAMES"] == "unknown"
    assert report["sockets"][0]["address"] == ["127.0.0.1", port]


def test_unmatched_inherited_socket_logged(children):
    """An inherited socket that matches no --listen is logged with its fd and name, and COMMAND does not get it."""
    with socket.create_server(("127.0.0.1", 0)) as passed:
        argv, env = socket_activation(passed, [
            *fdpass_run("-v", "-l", "web=127.0.0.1:0", "--", sys.executable, str(HELPERS / "report_listen_fds.py")),
        ])
        env["LISTEN_FDNAMES"] = "extra"
        child = children.start(argv, env=clean_environment(env), pass_fds=(passed.fileno(),))
        passed_port = passed.getsockname()[1]
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert "inherited fd 3 (socket" in stderr
    assert "named 'extra', matches no --listen; closing it" in stderr
    assert report["env"]["LISTEN_FDS"] == "1"
    assert report["env"]["LISTEN_FDNAMES"] == "web"
    assert report["sockets"][0]["address"][1] != passed_port


def test_verbose_logs_bound_addresses(children, tmp_path):
    """fdpass run -v logs each bound address, with the port that port 0 picked, and its fd and name."""
    path = tmp_path / "api.sock"
    child = children.start(fdpass_run(
        "-v", "-l", "web=127.0.0.1:0", "-l", f"api=unix-dgram:{path}",
        "--", sys.executable, str(HELPERS / "report_listen_fds.py"),
    ))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    port = report["sockets"][0]["address"][1]
    assert f"fdpass: listening on 127.0.0.1:{port} as fd 3, named 'web'" in stderr
    assert f"fdpass: listening on unix-dgram:{path} as fd 4, named 'api'" in stderr
