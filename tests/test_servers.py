"""Real servers behind ``fdpass run --restart-on HUP``: each restart under load refuses no connection.

gunicorn reads LISTEN_FDS itself, uvicorn takes ``--fd 3`` and hypercorn
``--bind fd://3``. Every test sends its traffic to 127.0.0.1 only, stops the
supervisor with SIGTERM, and at teardown sends SIGKILL to every process
group that served a request, so no server worker outlives the test.
"""

from __future__ import annotations

import importlib.util
import signal
import sys

import pytest
from conftest import HELPERS
from loadgen import (
    SHUTDOWN_DROPS,
    Load,
    group_is_gone,
    logged_port,
    restart_under_load,
    supervisor_restarted,
    wait_for_server,
)

pytestmark = pytest.mark.timeout(120)


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; install the [test] extra")


def supervise(children, *command: str, ready: str = "notify"):
    """Start command under fdpass run --restart-on HUP on a free port; return (supervisor, port)."""
    supervisor = children.start(
        [
            sys.executable, "-m", "fdpass", "-v", "run",
            "--listen", "http=127.0.0.1:0",
            "--restart-on", "HUP", "--ready", ready, "--stop-timeout", "20",
            "--", *command,
        ],
        stdout=None,
        cwd=str(HELPERS),
    )
    return supervisor, logged_port(supervisor.stderr_text)


def check_restarts_under_load(
    supervisor, port: int, seen_groups: set[int], tolerated: tuple[str, ...] = ()
) -> None:
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

    assert load.refused() == []
    assert load.errors_other_than(tolerated) == []
    assert len(load.servers_since(0)) >= 3

    supervisor.popen.send_signal(signal.SIGTERM)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so fdpass exits 128+15 like its child.
    assert supervisor.wait(30) in (0, 128 + signal.SIGTERM), supervisor.stderr_text()[-3000:]
    assert "exited with status" in supervisor.stderr_text()
    for pgid in seen_groups:
        assert group_is_gone(pgid), f"process group {pgid} outlived fdpass run"


def test_gunicorn_restart_under_load(children, seen_groups):
    """gunicorn adopts the socket through LISTEN_FDS, and READY=1 from its master ends each restart."""
    require("gunicorn")
    supervisor, port = supervise(
        children,
        sys.executable, "-m", "gunicorn", "--workers", "2", "--graceful-timeout", "10", "wsgi_app:app",
    )
    check_restarts_under_load(supervisor, port, seen_groups)


def test_uvicorn_restart_under_load(children, seen_groups):
    """uvicorn serves the passed socket with --fd 3; the app's lifespan startup sends READY=1."""
    require("uvicorn")
    supervisor, port = supervise(
        children,
        sys.executable, "-m", "uvicorn", "--fd", "3", "--lifespan", "on", "--log-level", "warning", "asgi_app:app",
    )
    # NOTE: uvicorn resets a connection it accepted but had not read when its
    # shutdown began; that is no refusal, so the check tolerates it.
    check_restarts_under_load(supervisor, port, seen_groups, tolerated=SHUTDOWN_DROPS)


def test_hypercorn_restart_under_load(children, seen_groups):
    """hypercorn serves the passed socket with --bind fd://3; a new one counts as ready after 2 s."""
    require("hypercorn")
    supervisor, port = supervise(
        children,
        sys.executable, "-m", "hypercorn", "--bind", "fd://3", "--graceful-timeout", "10", "asgi_app:app",
        ready="2",
    )
    # NOTE: hypercorn closes, without a response, a connection it accepted but
    # had not read when its shutdown began; the check tolerates that.
    check_restarts_under_load(supervisor, port, seen_groups, tolerated=SHUTDOWN_DROPS)
