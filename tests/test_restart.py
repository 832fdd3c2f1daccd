"""Restart in place with fdpass.reexec(): the end-to-end scenario."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

from conftest import clean_environment

#: Large enough that the response cannot be in flight as one segment: most of
#: it waits in the kernel's send and receive buffers during the restart.
RESPONSE_SIZE = 700 * 1024


def serve_one_response(server: socket.socket, response: bytes, received: list[bytes]) -> None:
    server.settimeout(20)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(20)
        request = b""
        while not request.endswith(b"\n"):
            chunk = conn.recv(1024)
            if not chunk:
                break
            request += chunk
        received.append(request)
        conn.sendall(response)


def test_response_survives_restart(children, tmp_path):
    """A response sent while the client restarts arrives complete, byte for byte, in the new run."""
    response = os.urandom(RESPONSE_SIZE)
    received: list[bytes] = []
    output_path = tmp_path / "response.bin"

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        thread = threading.Thread(target=serve_one_response, args=(server, response, received), daemon=True)
        thread.start()

        child = children.helper("fetch_across_restart.py", str(port), str(output_path))
        first = child.read_json()
        second = child.read_json()
        status, _, stderr = child.finish()
        thread.join(20)

    assert status == 0, stderr
    assert received == [b"GET /payload\n"]
    assert first["readable"] is True
    assert second["pid"] == first["pid"] == child.pid
    assert second["family"] == socket.AF_INET
    assert second["peer"] == ["127.0.0.1", port]
    assert second["length"] == RESPONSE_SIZE
    assert output_path.read_bytes() == response


def buffered_environment() -> dict[str, str]:
    """Return the child environment without PYTHONUNBUFFERED, so stdout on a pipe is block buffered."""
    env = clean_environment()
    env.pop("PYTHONUNBUFFERED", None)
    return env


def test_unflushed_output_kept(children, tmp_path):
    """print() without flush, a partial stderr line, buffered log records and a passed file's buffer survive."""
    child = children.helper("print_before_restart.py", str(tmp_path / "passed.txt"), env=buffered_environment())
    status, stdout, stderr = child.finish()

    assert status == 0, stderr
    lines = stdout.splitlines()
    assert "print before restart" in lines
    assert "log record before restart" in lines
    assert "print after log" in lines
    assert lines[-2] == "second run"
    assert lines[-1] == "file: 'file line before restart\\n'"
    assert len(lines) == 5
    assert lines.index("print before restart") < lines.index("print after log")
    assert stderr.startswith("stderr before restart")


BROKEN_STDOUT_PROGRAM = """
import os, sys, fdpass
fdpass.inherit()
if "HELPER_RESTARTED" in os.environ:
    with open(sys.argv[1], "w") as marker:
        marker.write(str(os.getpid()))
    os._exit(0)
print("lost: nobody reads stdout any more")
sys.stdin.readline()
fdpass.reexec(env={**os.environ, "HELPER_RESTARTED": "1"})
"""


def test_restart_with_broken_stdout(children, tmp_path):
    """A stdout whose reader is gone cannot be flushed, and reexec() goes on regardless."""
    marker = tmp_path / "restarted"
    child = children.python(
        "-c", BROKEN_STDOUT_PROGRAM, str(marker), stdin=subprocess.PIPE, env=buffered_environment()
    )

    child.popen.stdout.close()
    child.popen.stdin.write(b"go\n")
    child.popen.stdin.flush()
    status = child.wait()

    assert status == 0, child.stderr_text()
    assert marker.read_text() == str(child.pid)


THREAD_PROGRAM = """
import json, os, socket, sys, threading, fdpass
inherited = fdpass.inherit()
if "HELPER_RESTARTED" in os.environ:
    print(json.dumps({"pid": os.getpid(), "threads": threading.active_count(), "names": list(inherited)}), flush=True)
    sys.exit(0)
listener = socket.create_server(("127.0.0.1", 0))
def restart():
    fdpass.reexec({"listener": listener}, env={**os.environ, "HELPER_RESTARTED": "1"})
threading.Thread(target=restart).start()
listener.accept()
"""


def test_reexec_from_worker_thread(children):
    """reexec() called from a thread other than the main one replaces the whole process, same PID."""
    child = children.python("-c", THREAD_PROGRAM)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report == {"pid": child.pid, "threads": 1, "names": ["listener"]}


PENDING_SIGNAL_PROGRAM = r"""
import json, os, signal, fdpass
if os.environ.get("FDPASS_TEST_RUN") == "2":
    print(json.dumps({
        "pid": os.getpid(),
        "pending": sorted(signal.sigpending()),
        "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    }), flush=True)
    raise SystemExit(0)
# The sigwait() pattern: SIGHUP blocked without a handler, and one more
# SIGHUP already pending when the restart begins.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
os.kill(os.getpid(), signal.SIGHUP)
os.environ["FDPASS_TEST_RUN"] = "2"
fdpass.reexec()
"""


def test_pending_blocked_signal_survives_reexec(children):
    """A blocked SIGHUP without a handler, pending at reexec(), stays blocked and pending in the new run."""
    child = children.python("-c", PENDING_SIGNAL_PROGRAM)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["pid"] == child.pid
    assert report["pending"] == [signal.SIGHUP]
    assert signal.SIGHUP in report["blocked"]


THREAD_MASK_PROGRAM = r"""
import json, os, signal, threading, fdpass
if os.environ.get("FDPASS_TEST_RUN") == "2":
    print(json.dumps({"blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}), flush=True)
    raise SystemExit(0)
# SIGHUP is blocked in every thread, as for sigwait(); SIGTERM only in the
# thread that restarts.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
def restart():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.environ["FDPASS_TEST_RUN"] = "2"
    fdpass.reexec()
threading.Thread(target=restart).start()
threading.Event().wait(30)
"""


def test_reexec_unblocks_signal_blocked_in_one_thread(children):
    """A signal that only the restarting thread blocks is unblocked in the new run, one all threads block is not."""
    child = children.python("-c", THREAD_MASK_PROGRAM)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert signal.SIGHUP in report["blocked"]
    assert signal.SIGTERM not in report["blocked"]


INHERITED_TWICE_PROGRAM = r"""
import json, os, socket, fdpass
inherited = fdpass.inherit()
if "FDPASS_TEST_ROUND" not in os.environ:
    first = socket.create_server(("127.0.0.1", 0))
    second = socket.create_server(("127.0.0.1", 0))
    os.environ["FDPASS_TEST_ROUND"] = "1"
    print(json.dumps([first.getsockname()[1], second.getsockname()[1]]), flush=True)
    fdpass.reexec([first, second])
if os.environ["FDPASS_TEST_ROUND"] == "1":
    os.environ["FDPASS_TEST_ROUND"] = "2"
    fdpass.reexec(inherited)
print(json.dumps([[name, sock.getsockname()[1]] for name, sock in zip(
    [d.name for d in inherited.descriptions], inherited.objects)]), flush=True)
"""


def test_reexec_inherited_passes_shared_names(children):
    """reexec(fdpass.inherit()) passes both fds named "unknown", not only the first one under that name."""
    child = children.python("-c", INHERITED_TWICE_PROGRAM)

    ports = child.read_json()
    arrived = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert arrived == [["unknown", ports[0]], ["unknown", ports[1]]]


# Defines exec_as_passed(fds, names) for a test program's stage 0, which
# plays a service manager. It puts fds on 3, 4, ... with LISTEN_* naming
# them and executes the program again as stage 1, from the code in sys.argv[1].
EXEC_AS_PASSED_FUNCTION = r"""
def exec_as_passed(fds, names):
    import fcntl
    # Copies above every target first, so that no move overwrites another's source.
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for target, copy in enumerate(copies, 3):
        os.dup2(copy, target)
    os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=":".join(names))
    os.environ["FDPASS_TEST_ROUND"] = "1"
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], sys.argv[1]])
"""


# Stage 0 passes two sockets, one under a name with fdpass's reserved prefix.
SERVICE_MANAGER_NAME_PROGRAM = r"""
import json, os, socket, sys, fdpass
""" + EXEC_AS_PASSED_FUNCTION + r"""
stage = os.environ.get("FDPASS_TEST_ROUND", "0")
if stage == "0":
    first = socket.create_server(("127.0.0.1", 0))
    second = socket.create_server(("127.0.0.1", 0))
    print(json.dumps([first.getsockname()[1], second.getsockname()[1]]), flush=True)
    exec_as_passed([first.fileno(), second.fileno()], ["fdpass-x", "web"])
inherited = fdpass.inherit()
if stage == "1":
    os.environ["FDPASS_TEST_ROUND"] = "2"
    fdpass.reexec(inherited)
print(json.dumps([[name, sock.getsockname()[1]] for name, sock in zip(
    [d.name for d in inherited.descriptions], inherited.objects)]), flush=True)
"""


def test_reexec_inherited_keeps_service_manager_name(children):
    """A socket that a service manager named "fdpass-x" goes on as "unknown" with reexec(inherit()), not dropped."""
    child = children.python("-c", SERVICE_MANAGER_NAME_PROGRAM, SERVICE_MANAGER_NAME_PROGRAM)

    ports = child.read_json()
    arrived = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert arrived == [["unknown", ports[0]], ["web", ports[1]]]


# Stage 0 passes a pipe under the name that fdpass gives its state memfd.
SERVICE_MANAGER_STATE_PIPE_PROGRAM = r"""
import json, os, sys, fdpass
""" + EXEC_AS_PASSED_FUNCTION + r"""
stage = os.environ.get("FDPASS_TEST_ROUND", "0")
if stage == "0":
    read_end, write_end = os.pipe()
    os.write(write_end, b"from the service manager")
    os.close(write_end)
    exec_as_passed([read_end], ["fdpass-state"])
inherited = fdpass.inherit()
if stage == "1":
    print(json.dumps(fdpass.inherited_state()), flush=True)
    os.environ["FDPASS_TEST_ROUND"] = "2"
    fdpass.reexec(inherited)
pipe = inherited.objects[0]
print(json.dumps([inherited.descriptions[0].name, pipe.read().decode()]), flush=True)
"""


def test_inherited_state_pipe_under_state_name(children):
    """A pipe that a service manager named "fdpass-state" is not read as state, and reexec(inherit()) passes it on."""
    child = children.python("-c", SERVICE_MANAGER_STATE_PIPE_PROGRAM, SERVICE_MANAGER_STATE_PIPE_PROGRAM)

    state = child.read_json()
    arrived = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert state is None
    assert "inherited fd 3 named 'fdpass-state' is not one that fdpass passes under that name" in stderr
    assert arrived == ["unknown", "from the service manager"]


# Stage 0 passes a pipe and then a state memfd, both under the name fdpass-state.
STATE_AFTER_PIPE_PROGRAM = r"""
import json, os, sys, fdpass
from fdpass import state
""" + EXEC_AS_PASSED_FUNCTION + r"""
stage = os.environ.get("FDPASS_TEST_ROUND", "0")
if stage == "0":
    read_end, write_end = os.pipe()
    os.write(write_end, b"from the service manager")
    os.close(write_end)
    memfd = state.create_state_fd(b"the real state")
    exec_as_passed([read_end, memfd], ["fdpass-state", "fdpass-state"])
inherited = fdpass.inherit()
if stage == "1":
    print(json.dumps(fdpass.inherited_state().decode()), flush=True)
    os.environ["FDPASS_TEST_ROUND"] = "2"
    fdpass.reexec(inherited)
arrived = [[d.name, obj.read().decode()] for d, obj in zip(inherited.descriptions, inherited.objects)]
print(json.dumps(arrived), flush=True)
"""


def test_inherited_state_skips_pipe_before_memfd(children):
    """A sealed memfd named fdpass-state after a pipe of that name is read; reexec(inherit()) passes only the pipe."""
    child = children.python("-c", STATE_AFTER_PIPE_PROGRAM, STATE_AFTER_PIPE_PROGRAM)

    state = child.read_json()
    arrived = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert state == "the real state"
    assert arrived == [["unknown", "from the service manager"]]


CLOSED_STATE_PROGRAM = r"""
import json, os, sys, fdpass
from fdpass import state
""" + EXEC_AS_PASSED_FUNCTION + r"""
if os.environ.get("FDPASS_TEST_ROUND") is None:
    exec_as_passed([state.create_state_fd(b"lost")], ["fdpass-state"])
fdpass.inherit()["fdpass-state"].close()
try:
    fdpass.inherited_state()
except ValueError as error:
    print(json.dumps(str(error)), flush=True)
"""


def test_inherited_state_after_program_closed_memfd(children):
    """inherited_state() raises a ValueError that names the memfd when the program closed it before reading."""
    child = children.python("-c", CLOSED_STATE_PROGRAM, CLOSED_STATE_PROGRAM)

    message = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert "closed the file object of the 'fdpass-state' memfd" in message
