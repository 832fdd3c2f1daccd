"""Python servers that restart with fdpass: asyncio and socketserver, under client load.

asyncio.start_server(sock=...) and socketserver restart in place with
fdpass.reexec(); loop.create_server(sock=...) runs under the
``fdpass run --restart-on HUP`` supervisor. In each case a restart under load
refuses no connection and drops no request.
"""

from __future__ import annotations

import signal
import sys

import pytest
from conftest import HELPERS
from loadgen import (
    Load,
    free_port,
    group_is_gone,
    restart_under_load,
    supervisor_restarted,
    wait_for_server,
)

pytestmark = pytest.mark.timeout(120)


def check_in_place_restarts(server, port: int) -> None:
    generations = [server.read_json()]
    wait_for_server(port)

    def restarted(number: int) -> bool:
        # The new run prints its JSON line once it accepts; readline waits for it.
        while len(generations) <= number:
            generations.append(server.read_json(timeout=20))
        return generations[number]["generation"] == number

    load = Load(port)
    with load.running():
        load.wait_for_answers(50)
        restart_under_load(
            lambda: server.popen.send_signal(signal.SIGHUP),
            restarted,
            lambda: "server stderr:\n" + server.stderr_text()[-3000:],
            load,
        )

    assert load.errors == []
    assert load.process_groups() == {server.pid}
    assert {answer.split(".")[0] for answer in load.servers_since(0)} == {str(server.pid)}
    assert len(load.servers_since(0)) == 3

    server.popen.send_signal(signal.SIGTERM)
    status, _, stderr = server.finish(30)
    assert status == 0, stderr


def test_asyncio_start_server_restarts_in_place(children):
    """asyncio.start_server(sock=...) keeps its listener through two reexec() calls under load."""
    port = free_port()
    server = children.python(str(HELPERS / "asyncio_server.py"), "start_server", str(port))
    check_in_place_restarts(server, port)


def test_socketserver_restarts_in_place(children):
    """socketserver.TCPServer keeps its listener through two reexec() calls under load."""
    port = free_port()
    server = children.python(str(HELPERS / "socketserver_server.py"), str(port))
    check_in_place_restarts(server, port)


def test_asyncio_create_server_under_supervisor(children, seen_groups):
    """loop.create_server(sock=...) under fdpass run: two supervised restarts under load drop nothing."""
    port = free_port()
    supervisor = children.start(
        [
            sys.executable, "-m", "fdpass", "-v", "run",
            "--listen", f"http=127.0.0.1:{port}", "--restart-on", "HUP", "--stop-timeout", "20",
            "--", sys.executable, str(HELPERS / "asyncio_server.py"), "create_server", "0",
        ],
        stdout=None,
    )
    wait_for_server(port)
    load = Load(port)
    try:
        with load.running():
            load.wait_for_answers(50)
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
