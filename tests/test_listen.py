"""fdpass.listen(): return the inherited socket for an address, or bind a new one."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest

import fdpass


def run_cases(children, cases, *, restart=False):
    args = [json.dumps(cases)] + (["--restart"] if restart else [])
    child = children.helper("listen_cases.py", *args)
    first = child.read_json()
    registered = child.read_json() if restart else None
    second = child.read_json() if restart else None
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert first["pid"] == child.pid
    return first["cases"], registered, second


@pytest.fixture(scope="module")
def restarted(module_children, tmp_path_factory):
    """Run listen() for every kind, restart, and return (cases, first run, registered names, second run)."""
    tmp_path = tmp_path_factory.mktemp("listen")
    abstract_name = f"fdpass-test-listen-{os.getpid()}-{os.urandom(4).hex()}"
    cases = [
        ["tcp4", ["127.0.0.1", 0], "stream", "tcp4"],
        ["tcp6", ["::1", 0], "stream", "tcp6"],
        ["udp4", ["127.0.0.1", 0], "dgram", "udp4"],
        ["udp6", ["::1", 0], "dgram", "udp6"],
        ["unix stream", str(tmp_path / "stream.sock"), "stream", "unix-stream"],
        ["unix dgram", str(tmp_path / "dgram.sock"), "dgram", "unix-dgram"],
        ["unix seqpacket", str(tmp_path / "seqpacket.sock"), "seqpacket", "unix-seqpacket"],
        ["abstract", {"abstract": abstract_name}, "stream", None],
    ]
    first, registered, second = run_cases(module_children, cases, restart=True)
    return cases, first, registered, second


EXPECTED_KIND = {
    "tcp4": (socket.AF_INET, socket.SOCK_STREAM, True),
    "tcp6": (socket.AF_INET6, socket.SOCK_STREAM, True),
    "udp4": (socket.AF_INET, socket.SOCK_DGRAM, False),
    "udp6": (socket.AF_INET6, socket.SOCK_DGRAM, False),
    "unix stream": (socket.AF_UNIX, socket.SOCK_STREAM, True),
    "unix dgram": (socket.AF_UNIX, socket.SOCK_DGRAM, False),
    "unix seqpacket": (socket.AF_UNIX, socket.SOCK_SEQPACKET, True),
    "abstract": (socket.AF_UNIX, socket.SOCK_STREAM, True),
}


def test_listen_creates_each_kind(restarted):
    """Without inherited sockets, listen() binds a new socket of the requested kind."""
    cases, first, _, _ = restarted

    for label, address, _, _ in cases:
        family, sock_type, listening = EXPECTED_KIND[label]
        result = first[label]
        assert result["error_type"] is None, (label, result)
        assert result["family"] == family, label
        assert result["type"] == sock_type, label
        assert result["listening"] is listening, label
        assert result["same_on_second_call"] is True, label
        if isinstance(address, list):
            assert result["sockname"][0] == address[0], label
            assert result["sockname"][1] != 0, label
        else:
            assert result["sockname"] == address, label


def test_reexec_passes_listeners(restarted):
    """reexec() with no fds passes every socket listen() returned, under its name."""
    _, _, registered, second = restarted

    assert registered == {
        "registered": sorted(
            ["tcp4", "tcp6", "udp4", "udp6", "unix-stream", "unix-dgram", "unix-seqpacket", "unknown"]
        )
    }
    assert second["names"] == ["tcp4", "tcp6", "udp4", "udp6", "unix-stream", "unix-dgram", "unix-seqpacket", "unknown"]


def test_listen_returns_inherited(restarted):
    """After the restart, listen() with the same address returns the inherited socket, not a new one."""
    cases, first, _, second = restarted

    for label, _, _, _ in cases:
        result = second["cases"][label]
        family, sock_type, listening = EXPECTED_KIND[label]
        assert result["inherited"] is True, (label, result)
        assert result["bound_is_same"] is True, label
        assert result["original_address"]["sockname"] == first[label]["sockname"], label
        assert result["original_address"]["family"] == family, label
        assert result["original_address"]["type"] == sock_type, label
        assert result["original_address"]["listening"] is listening, label


def test_same_port_tcp_and_udp(children):
    """TCP and UDP on one port are two sockets, and after a restart each type gets its own back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cases = [
        ["tcp", ["127.0.0.1", port], "stream", "tcp"],
        ["udp", ["127.0.0.1", port], "dgram", "udp"],
    ]

    first, _, second = run_cases(children, cases, restart=True)

    assert first["tcp"]["fd"] != first["udp"]["fd"]
    assert second["cases"]["tcp"]["inherited"] is True
    assert second["cases"]["tcp"]["original_address"]["type"] == socket.SOCK_STREAM
    assert second["cases"]["udp"]["inherited"] is True
    assert second["cases"]["udp"]["original_address"]["type"] == socket.SOCK_DGRAM


def test_stale_unix_socket_removed(children, tmp_path):
    """A socket file left by a closed socket is removed, and listen() binds there."""
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.listen()
    stale.close()
    assert path.exists()

    first, _, _ = run_cases(children, [["stale", str(path), "stream", None]])

    assert first["stale"]["error_type"] is None, first
    assert first["stale"]["sockname"] == str(path)


def test_live_unix_socket_kept(children, tmp_path):
    """A socket file that another process accepts on is neither removed nor bound over."""
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()

        first, _, _ = run_cases(children, [["live", str(path), "stream", None]])

        assert path.exists()
    result = first["live"]
    assert result["error_type"] == "OSError", result
    assert result["errno"] == errno.EADDRINUSE
    assert str(path) in result["message"]


def test_live_unix_socket_full_queue(children, tmp_path):
    """A live Unix socket whose accept queue is full raises EADDRINUSE at once instead of blocking in the probe."""
    path = tmp_path / "busy.sock"
    clients = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(0)
        # With backlog 0 the kernel queues one or two connections; 64 attempts is far more than it needs.
        for _ in range(64):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            try:
                client.connect(str(path))
            except BlockingIOError:
                break
        else:
            pytest.fail("the accept queue of a listen(0) Unix socket never filled")

        try:
            first, _, _ = run_cases(children, [["busy", str(path), "stream", None]])
        finally:
            for client in clients:
                client.close()

        assert path.exists()
    result = first["busy"]
    assert result["error_type"] == "OSError", result
    assert result["errno"] == errno.EADDRINUSE
    assert str(path) in result["message"]
    assert "another process is accepting connections" in result["message"]


def test_unix_path_not_a_socket(children, tmp_path):
    path = tmp_path / "regular-file"
    path.write_text("keep me")

    first, _, _ = run_cases(children, [["file", str(path), "stream", None]])

    assert first["file"]["error_type"] == "OSError"
    assert str(path) in first["file"]["message"]
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_port_in_use(children, host):
    """Binding a port that another socket listens on raises OSError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as busy:
        port = busy.getsockname()[1]

        first, _, _ = run_cases(children, [["busy", [host, port], "stream", None]])

    result = first["busy"]
    assert result["error_type"] == "OSError", result
    assert result["errno"] == errno.EADDRINUSE
    assert host in result["message"]
    assert str(port) in result["message"]


@pytest.mark.parametrize(
    ("address", "sock_type", "error_type"),
    [
        (["127.0.0.1", 70000], "stream", "ValueError"),
        (["127.0.0.1", -1], "stream", "ValueError"),
        ("", "stream", "ValueError"),
        ("/tmp/" + "x" * 200, "stream", "ValueError"),
        (["127.0.0.1", 0], "seqpacket", "ValueError"),
        (5, "stream", "TypeError"),
    ],
)
def test_bad_address_rejected(children, address, sock_type, error_type):
    first, _, _ = run_cases(children, [["bad", address, sock_type, None]])

    assert first["bad"]["error_type"] == error_type, first


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/tmp/fdpass\0socket", "contains a NUL byte"),
        (b"/tmp/fdpass\0socket", "contains a NUL byte"),
        (("127.0.0.1\0", 0), "contains a NUL character"),
    ],
)
def test_nul_in_address_rejected(address, expected):
    """A NUL inside a path or host is rejected with the address, before anything is bound."""
    with pytest.raises(ValueError) as raised:
        fdpass.listen(address)

    assert expected in str(raised.value)
    assert repr(address) in str(raised.value)


def test_listen_skips_accepted_connections(children, tmp_path):
    """An inherited accepted connection shares its listener's address, but listen() returns the listener."""
    child = children.helper("listen_prefers_listener.py", str(tmp_path))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["tcp_is_listener"] is True
    assert report["tcp_is_conn"] is False
    assert report["unix_is_listener"] is True
    assert report["unix_is_conn"] is False
    assert report["udp_type"] == socket.SOCK_DGRAM
    assert report["udp_port"] == report["port"]
    assert report["udp_is_inherited"] is False


def test_listen_again_renames_listener(children):
    """listen() on a registered address returns the same socket, now registered under the new name."""
    code = (
        "import json, fdpass\n"
        "first = fdpass.listen(('127.0.0.1', 0), name='a')\n"
        "second = fdpass.listen(first.getsockname(), name='b')\n"
        "print(json.dumps({'same': first is second, 'names': [n for n, _ in fdpass.listeners()]}), flush=True)\n"
    )
    child = children.python("-c", code)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["same"] is True
    assert report["names"] == ["b"]


@pytest.fixture(scope="module")
def port_zero_runs(module_children):
    """Run listen_port_zero.py across one restart and return (fixed port, first report, second report)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        fixed_port = probe.getsockname()[1]
    child = module_children.helper("listen_port_zero.py", str(fixed_port))
    first = child.read_json()
    second = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    return fixed_port, first, second


def test_port_zero_binds_new_sockets(port_zero_runs):
    """Each port-0 listen() gets its own socket unless it repeats an explicit name."""
    fixed_port, first, _ = port_zero_runs
    ports = first["ports"]

    assert ports["http"] == fixed_port
    assert ports["admin"] != fixed_port
    assert first["admin_again_is_admin"] is True
    assert first["unnamed_two_is_unnamed_one"] is False
    assert first["upgrader_two_is_upgrader_one"] is False
    assert len(set(ports.values())) == len(ports), ports
    assert first["registered"] == sorted(
        [
            ["http", fixed_port],
            ["admin", ports["admin"]],
            ["metrics", ports["metrics"]],
            ["unknown", ports["unnamed_one"]],
            ["unknown", ports["unnamed_two"]],
            ["unknown", ports["upgrader_one"]],
            ["unknown", ports["upgrader_two"]],
        ]
    )


def test_port_zero_after_restart(port_zero_runs):
    """After reexec(), port-0 calls get back their own inherited sockets, each one once."""
    fixed_port, first, second = port_zero_runs
    ports = second["ports"]

    assert ports["http"] == fixed_port
    assert ports["admin"] == first["ports"]["admin"]
    assert ports["metrics"] == first["ports"]["metrics"]
    unnamed_before = {first["ports"]["unnamed_one"], first["ports"]["unnamed_two"]}
    assert {ports["unnamed_one"], ports["unnamed_two"]} == unnamed_before
    assert ports["unnamed_one"] != ports["unnamed_two"]
    assert second["inherited"]["unnamed_three"] is False
    # The first run closed its Upgrader's sockets before reexec(), so the
    # kernel may hand their ports out again; only the passed ones stay taken.
    passed = ("http", "admin", "metrics", "unnamed_one", "unnamed_two")
    assert ports["unnamed_three"] not in {first["ports"][label] for label in passed}
    assert len(set(ports.values())) == len(ports), ports
    assert all(second["inherited"][label] for label in ("admin", "metrics", "unnamed_one", "unnamed_two"))


@pytest.mark.parametrize("backlog", [-1, 2**31, 2**40, True, 1.5, "5"])
def test_bad_backlog_rejected(backlog):
    """A backlog outside 0 to INT_MAX, or not an int, raises a ValueError that names it, before anything is bound."""
    with pytest.raises(ValueError) as raised:
        fdpass.listen(("127.0.0.1", 0), backlog=backlog)

    assert f"backlog must be an int from 0 to 2147483647, or None, not {backlog!r}" in str(raised.value)


# Run 1 listens on 127.0.0.1 and restarts. Run 2 calls listen() with the
# wildcard address on the same port, which its own inherited socket blocks.
OWN_PORT_PROGRAM = """
import json, fdpass
inherited = fdpass.inherit()
if "http" not in inherited:
    fdpass.listen(("127.0.0.1", 0), name="http")
    fdpass.reexec()
port = inherited["http"].getsockname()[1]
report = {"port": port, "fd": inherited["http"].fileno()}
try:
    fdpass.listen(("0.0.0.0", port))
except OSError as error:
    report.update(type=type(error).__name__, errno=error.errno, message=str(error))
    report["exported"] = isinstance(error, fdpass.AddressInUseByThisProcessError)
report["same"] = fdpass.listen(("127.0.0.1", port)) is inherited["http"]
print(json.dumps(report), flush=True)
"""


def test_port_held_by_inherited_socket(children):
    """EADDRINUSE from this process's own inherited socket names that fd instead of another program."""
    child = children.python("-c", OWN_PORT_PROGRAM)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["type"] == "AddressInUseByThisProcessError"
    assert report["exported"] is True
    assert report["errno"] == errno.EADDRINUSE
    assert f"inherited fd {report['fd']} named 'http'" in report["message"]
    assert f"('127.0.0.1', {report['port']})" in report["message"]
    assert report["same"] is True
