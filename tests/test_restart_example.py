"""examples/sighup_server.py keeps its listener and open connections across SIGHUP restarts."""

from __future__ import annotations

import pathlib
import re
import signal
import socket

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sighup_server.py"

STARTED = re.compile(r"pid (\d+) run (\d+): serving on 127\.0\.0\.1:(\d+) with (\d+) kept connections")


def read_started(child):
    line = child.readline()
    match = STARTED.fullmatch(line)
    assert match, line
    pid, run, port, kept = (int(group) for group in match.groups())
    return pid, run, port, kept


def ask(stream, line: str) -> str:
    stream.write(f"{line}\n".encode())
    stream.flush()
    return stream.readline().decode().rstrip("\n")


def test_sighup_keeps_connection(children):
    """A connection opened before SIGHUP is served by the new run of the same process."""
    child = children.python(EXAMPLE, "--port", "0")
    pid, run, port, kept = read_started(child)
    assert (pid, run, kept) == (child.pid, 1, 0)

    with socket.create_connection(("127.0.0.1", port), timeout=15) as client, client.makefile("rwb") as stream:
        assert ask(stream, "hello") == f"pid {pid} run 1: hello"

        # Half a line before the restart and the rest during it: the new run
        # must join them.
        stream.write(b"split ")
        stream.flush()
        assert ask(stream, "") == f"pid {pid} run 1: split "
        stream.write(b"across ")
        stream.flush()
        child.popen.send_signal(signal.SIGHUP)
        stream.write(b"restart\n")
        stream.flush()

        assert read_started(child) == (pid, 2, port, 1)
        assert stream.readline().decode() == f"pid {pid} run 2: across restart\n"
        assert ask(stream, "again") == f"pid {pid} run 2: again"

        with socket.create_connection(("127.0.0.1", port), timeout=15) as late, late.makefile("rwb") as late_stream:
            assert ask(late_stream, "new client") == f"pid {pid} run 2: new client"

            child.popen.send_signal(signal.SIGHUP)
            assert read_started(child) == (pid, 3, port, 2)
            assert ask(stream, "third run") == f"pid {pid} run 3: third run"
            assert ask(late_stream, "still here") == f"pid {pid} run 3: still here"

    assert child.popen.poll() is None
