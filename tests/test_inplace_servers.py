"""Python servers that restart with fdpass: asyncio and socketserver, under client load.

asyncio.start_server(sock=...), as examples/asyncio_restart.py uses it, and
socketserver restart in place with fdpass.reexec(); loop.create_server(sock=...)
runs under the
``fdpass run --restart-on HUP`` supervisor. In each case a restart under load
refuses no connection and drops no request.
"""

from __future__ import annotations

import pathlib
import re
import signal
import sys
from collections.abc import Callable

import pytest
from conftest import HELPERS
from loadgen import (
    Load,
    group_is_gone,
    logged_port,
    restart_under_load,
    supervisor_restarted,
    wait_for_server,
)

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_STARTED = re.compile(r"run (\d+): PID \d+ serving on 127\.0\.0\.1:(\d+)")

pytestmark = pytest.mark.timeout(120)


def check_in_place_restarts(server, port: int, read_run: Callable[[], int], first_run: int) -> None:
    """Restart server in place twice under load; read_run() returns the run number each later run prints."""
    runs = [first_run]
    wait_for_server(port)

    def restarted(number: int) -> bool:
        # Each run prints its line once it accepts, and read_run() waits for it.
        while len(runs) <= number:
            runs.append(read_run())
        return runs[number] == runs[0] + number

    load = Load(port)
    with load.running():
        load.wait_for_responses(50)
        restart_under_load(
            lambda: server.popen.send_signal(signal.SIGHUP),
            restarted,
            lambda: "server stderr:\n" + server.stderr_text()[-3000:],
            load,
        )

    assert load.errors == []
    assert {server.split(".")[0] for server in load.servers_since(0)} == {str(server.pid)}
    assert len(load.servers_since(0)) == 3

    server.popen.send_signal(signal.SIGTERM)
    status, _, stderr = server.finish(30)
    assert status == 0, stderr


def test_asyncio_start_server_restarts_in_place(children):
    """examples/asyncio_restart.py (asyncio.start_server(sock=...)) keeps its listener through two reexec() calls."""
    server = children.python(str(EXAMPLES / "asyncio_restart.py"), "0")
    ports = []

    def read_run() -> int:
        match = EXAMPLE_STARTED.fullmatch(server.readline())
        assert match is not None
        ports.append(int(match.group(2)))
        return int(match.group(1))

    first_run = read_run()
    check_in_place_restarts(server, ports[0], read_run, first_run)
    assert set(ports) == {ports[0]}


def test_socketserver_restarts_in_place(children):
    """socketserver.TCPServer keeps its listener through two reexec() calls under load."""
    server = children.python(str(HELPERS / "socketserver_server.py"), "0")
    first = server.read_json()
    check_in_place_restarts(server, first["port"], lambda: int(server.read_json()["generation"]), first["generation"])


def test_asyncio_create_server_under_supervisor(children, seen_groups):
    """loop.create_server(sock=...) under fdpass run: two supervised restarts under load drop nothing."""
    supervisor = children.start(
        [
            sys.executable, "-m", "fdpass", "-v", "run",
            "--listen", "http=127.0.0.1:0", "--restart-on", "HUP", "--stop-timeout", "20",
            "--", sys.executable, str(HELPERS / "asyncio_server.py"),
        ],
        stdout=None,
    )
    port = logged_port(supervisor.stderr_text)
    wait_for_server(port)
    load = Load(port)
    try:
        with load.running():
            load.wait_for_responses(50)
            restart_under_load(
                lambda: supervisor.popen.send_signal(signal.SIGHUP),
                lambda number: supervisor_restarted(supervisor.stderr_text, number),
                lambda: "supervisor stderr:\n" + supervisor.stderr_text()[-3000:],
                load,
            )
    finally:
        seen_groups.update(load.process_groups())

    assert load.errors == []
    assert len(load.servers_since(0)) == 3

    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.stderr_text()[-3000:]
    for pgid in seen_groups:
        assert group_is_gone(pgid), f"process group {pgid} outlived fdpass run"
