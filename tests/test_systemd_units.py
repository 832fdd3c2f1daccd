"""The systemd units of the docs, run with systemd-socket-activate in place of systemd.

tests/data/systemd holds the socket unit and the service unit that
docs/systemd.md shows. This test runs the service's ExecStart= command line
the way systemd would: under systemd-socket-activate with a socket bound as
the socket unit's ListenStream= (on a free port) and its FileDescriptorName=, in WorkingDirectory=, with NOTIFY_SOCKET
pointing at a socket the test reads in place of systemd's. Only the install
paths, the port and the runtime directory are replaced. Then it runs
ExecReload= under client load and stops the service as KillMode=mixed does.
"""

from __future__ import annotations

import array
import os
import pathlib
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys

import pytest
from conftest import HELPERS, clean_environment
from loadgen import Load, fetch, group_is_gone, socket_activation, wait_for_server, wait_until

UNITS = pathlib.Path(__file__).parent / "data" / "systemd"
INSTALL_PREFIX = "/opt/app/venv/bin/"
RUNTIME_DIRECTORY = "/run/fdpass-app"
DOCUMENTED_ADDRESS = "127.0.0.1:8080"

pytestmark = pytest.mark.timeout(120)


def pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def read_unit(name: str) -> dict[str, str]:
    """Return the Key=Value settings of a unit file; a repeated key keeps its last value."""
    settings = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def local_command(exec_start: str, port: int, runtime_directory: pathlib.Path) -> list[str]:
    """Return ExecStart= as argv for this machine: installed programs run through this interpreter."""
    argv: list[str] = []
    for arg in shlex.split(exec_start):
        if arg.startswith(INSTALL_PREFIX):
            argv += [sys.executable, "-m", arg[len(INSTALL_PREFIX):]]
            continue
        arg = arg.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{port}")
        argv.append(arg.replace(RUNTIME_DIRECTORY, str(runtime_directory)))
    return argv


class FakeManagerSocket:
    """The NOTIFY_SOCKET end that systemd would read: messages, sender PIDs and stored fds."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.settimeout(20)
        self.stored: dict[str, socket.socket] = {}

    def receive(self) -> tuple[int, dict[str, str]]:
        """Return (sender PID, fields) of the next message; FDSTORE=1 fds are kept by FDNAME."""
        fd_size = array.array("i").itemsize
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16 * fd_size))
        pid = 0
        fds: list[int] = []
        for _, kind, payload in ancillary:
            if kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack_from("i", payload)[0]
            elif kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % fd_size]))
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        for fd in fds:
            self.stored[fields.get("FDNAME", "stored")] = socket.socket(fileno=fd)
        return pid, fields

    def wait_for(self, key: str, value: str) -> int:
        """Receive until a message sets key=value, and return its sender's PID."""
        for _ in range(50):
            pid, fields = self.receive()
            if fields.get(key) == value:
                return pid
        raise AssertionError(f"no {key}={value} in 50 messages")

    def close(self) -> None:
        for stored in self.stored.values():
            stored.close()
        self.sock.close()


def test_documented_units_run_under_socket_activation(children, tmp_path, seen_groups):
    """The documented ExecStart= serves, ExecReload= restarts it under load, and SIGTERM stops it."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    pytest.importorskip("gunicorn")
    socket_unit = read_unit("fdpass-app.socket")
    service_unit = read_unit("fdpass-app.service")
    assert socket_unit["ListenStream"] == DOCUMENTED_ADDRESS
    assert service_unit["NotifyAccess"] == "main"
    assert int(service_unit["FileDescriptorStoreMax"]) >= 2

    # The socket unit's role: bind ListenStream= (on a free port here) and pass
    # it to systemd-socket-activate, which passes it on with FileDescriptorName=.
    unit_socket = socket.create_server(("127.0.0.1", 0))
    port = unit_socket.getsockname()[1]
    runtime_directory = tmp_path / "run"
    runtime_directory.mkdir()
    manager = FakeManagerSocket(tmp_path / "notify")
    command = local_command(service_unit["ExecStart"], port, runtime_directory)
    argv, env = socket_activation(unit_socket, [
        activate, f"--fdname={socket_unit['FileDescriptorName']}",
        "-E", f"NOTIFY_SOCKET={manager.path}", "-E", "PYTHONUNBUFFERED=1", *command,
    ])
    service = children.start(
        argv, env=clean_environment(env), pass_fds=(unit_socket.fileno(),), cwd=str(HELPERS), stdout=None
    )
    unit_socket.close()
    try:
        # systemd 252's systemd-socket-activate starts the service on the first connection.
        wait_for_server(port)
        main_pid = manager.wait_for("READY", "1")
        assert main_pid == service.pid
        wait_until(lambda: {"http", "admin"} <= set(manager.stored), 20, lambda: f"stored {set(manager.stored)}")
        assert manager.stored["http"].getsockname() == ("127.0.0.1", port)

        first_server, first_group = fetch(port)
        seen_groups.add(first_group)
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(runtime_directory / "admin.sock"))
            admin.sendall(b"GET / HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            assert b" 200 OK" in admin.recv(4096)

        load = Load(port)
        with load.running():
            load.wait_for_responses(50)
            reload_argv = shlex.split(service_unit["ExecReload"].replace("$MAINPID", str(main_pid)))
            subprocess.run(reload_argv, check=True, timeout=30)
            manager.wait_for("RELOADING", "1")
            manager.wait_for("READY", "1")
            # The old generation is gone once the worker that served first has exited.
            wait_until(lambda: pid_is_gone(int(first_server)), 30, lambda: service.stderr_text()[-3000:])
            mark = load.count()
            load.wait_for_responses(mark + 50)
        seen_groups.update(load.process_groups())

        assert load.errors == []
        assert first_server not in load.servers_since(mark)

        os.kill(main_pid, signal.SIGTERM)
        assert service.wait(60) == 0, service.stderr_text()[-3000:]
        for pgid in seen_groups:
            assert group_is_gone(pgid)
    finally:
        manager.close()


def test_docs_show_the_tested_units():
    """docs/systemd.md shows the unit files that this module runs, line for line."""
    docs = pathlib.Path(__file__).resolve().parents[1] / "docs" / "systemd.md"
    if not docs.exists():
        pytest.skip("docs/ is not next to tests/ here")
    text = docs.read_text()

    for name in ("fdpass-app.socket", "fdpass-app.service"):
        unit = (UNITS / name).read_text()
        assert f"`{name}`:\n\n```ini\n{unit}```" in text, f"docs/systemd.md shows another {name}"
