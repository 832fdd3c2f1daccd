"""Every fd kind survives fdpass.reexec() with its family, type, protocol and address."""

from __future__ import annotations

import json
import socket
import subprocess
import threading

import pytest

AF_INET, AF_INET6, AF_UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
STREAM, DGRAM, SEQPACKET = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP

#: name -> (family, type, protocol, listening) of every socket the helper passes.
EXPECTED_SOCKETS = {
    "tcp4_listen": (AF_INET, STREAM, TCP, True),
    "tcp6_listen": (AF_INET6, STREAM, TCP, True),
    "tcp4_client": (AF_INET, STREAM, TCP, False),
    "tcp4_accepted": (AF_INET, STREAM, TCP, False),
    "tcp6_client": (AF_INET6, STREAM, TCP, False),
    "tcp6_accepted": (AF_INET6, STREAM, TCP, False),
    "same_port_tcp": (AF_INET, STREAM, TCP, True),
    "same_port_udp": (AF_INET, DGRAM, UDP, False),
    "udp4": (AF_INET, DGRAM, UDP, False),
    "udp6": (AF_INET6, DGRAM, UDP, False),
    "udp4_connected": (AF_INET, DGRAM, UDP, False),
    "unix_stream": (AF_UNIX, STREAM, 0, True),
    "unix_dgram": (AF_UNIX, DGRAM, 0, False),
    "unix_seqpacket": (AF_UNIX, SEQPACKET, 0, True),
    "unix_abstract": (AF_UNIX, STREAM, 0, True),
    "unix_client": (AF_UNIX, STREAM, 0, False),
    "unix_accepted": (AF_UNIX, STREAM, 0, False),
    "unix_seqpacket_client": (AF_UNIX, SEQPACKET, 0, False),
    "unix_seqpacket_accepted": (AF_UNIX, SEQPACKET, 0, False),
    "pair_stream_a": (AF_UNIX, STREAM, 0, False),
    "pair_stream_b": (AF_UNIX, STREAM, 0, False),
    "pair_dgram_a": (AF_UNIX, DGRAM, 0, False),
    "pair_dgram_b": (AF_UNIX, DGRAM, 0, False),
    "pair_seqpacket_a": (AF_UNIX, SEQPACKET, 0, False),
    "pair_seqpacket_b": (AF_UNIX, SEQPACKET, 0, False),
}

#: name -> (readable, writable) of every pipe end and file the helper passes.
EXPECTED_FILES = {
    "pipe_read": (True, False),
    "pipe_write": (False, True),
    "file_read": (True, False),
    "file_append": (False, True),
    "file_update": (True, True),
}


@pytest.fixture(scope="module")
def restarted(module_children, tmp_path_factory):
    """Run the helper once and return (before, after, exchange) as it reported them."""
    child = module_children.helper("socket_kinds.py", str(tmp_path_factory.mktemp("kinds")))
    before = child.read_json()
    after = child.read_json()
    exchange = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    return before, after, exchange


def test_every_fd_arrives_by_name(restarted):
    before, after, _ = restarted

    assert list(after) == list(before)
    assert set(after) == set(EXPECTED_SOCKETS) | set(EXPECTED_FILES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SOCKETS))
def test_socket_kind_kept(restarted, name):
    """The rebuilt socket has the family, type, protocol and addresses of the original."""
    before, after, _ = restarted
    family, sock_type, proto, listening = EXPECTED_SOCKETS[name]
    got = after[name]

    assert got["object"] == "socket"
    assert got["family"] == family
    assert got["type"] == sock_type
    assert got["proto"] == proto
    assert got["so_domain"] == family
    assert got["so_type"] == sock_type
    assert got["so_protocol"] == proto
    assert got["listening"] is listening
    assert got["sockname"] == before[name]["sockname"]
    assert got["peername"] == before[name]["peername"]
    # The original object may show proto 0, but what the kernel reports must not change.
    for option in ("so_domain", "so_type", "so_protocol", "listening", "blocking"):
        assert got[option] == before[name][option], option
    # O_NONBLOCK belongs to the open file description, so it survives exec.
    # The timeout lives in the socket object, and reaches the new run
    # through FDPASS_SOCKETS.
    assert got["timeout"] == before[name]["timeout"]


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_pipe_or_file_kept(restarted, name):
    """Pipes and files come back as file objects with the original access mode and offset."""
    before, after, _ = restarted
    readable, writable = EXPECTED_FILES[name]
    got = after[name]

    assert got["object"] == "file"
    assert got["readable"] is readable
    assert got["writable"] is writable
    assert got["inode"] == before[name]["inode"]
    assert got["position"] == before[name]["position"]


def test_same_port_tcp_and_udp(restarted):
    """TCP and UDP bound to the same port come back as stream and datagram."""
    _, after, _ = restarted

    assert after["same_port_tcp"]["sockname"] == after["same_port_udp"]["sockname"]
    assert after["same_port_tcp"]["type"] == STREAM
    assert after["same_port_udp"]["type"] == DGRAM


def test_nonblocking_socket_stays_nonblocking(restarted):
    before, after, _ = restarted

    assert before["udp6"]["blocking"] is False
    assert after["udp6"]["blocking"] is False
    assert after["udp6"]["timeout"] == 0.0
    assert after["udp4"]["timeout"] is None


def test_ipv6_stays_ipv6(restarted):
    _, after, _ = restarted

    for name in ("tcp6_listen", "tcp6_client", "tcp6_accepted", "udp6"):
        assert after[name]["family"] == AF_INET6, name
        assert after[name]["sockname"][0] == "::1", name


def test_queued_data_read_after_restart(restarted):
    """Bytes queued before the restart are read by the new run, on every connected kind."""
    _, _, exchange = restarted
    received = exchange["received"]

    assert received["tcp4"] == "tcp4 before restart"
    assert received["tcp6"] == "tcp6 before restart"
    assert received["unix"] == "unix before restart"
    assert received["seqpacket"] == "seqpacket before restart"
    assert received["udp4"] == "udp4 before restart"
    assert received["udp4_sender_is_connected_socket"] is True
    assert received["pair_stream"] == "pair stream before restart"
    assert received["pair_dgram"] == "pair dgram before restart"
    assert received["pair_seqpacket"] == "pair seqpacket before restart"
    assert received["pipe"] == "pipe before restart"
    assert received["file_read"] == "456789"


def test_sockets_work_after_restart(restarted):
    """Listeners accept new connections and connected sockets carry data both ways."""
    _, _, exchange = restarted

    for name, data in exchange["accepted"].items():
        assert data == "ping", name
    assert set(exchange["accepted"]) == {
        "tcp4_listen",
        "tcp6_listen",
        "same_port_tcp",
        "unix_stream",
        "unix_seqpacket",
        "unix_abstract",
    }
    assert exchange["replies"] == {"tcp4": "reply", "unix": "reply"}
    assert exchange["log"] == "first run\nsecond run\n"


def connect_and_ask(port: int, client_id: int, replies: dict[int, str]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
        client.sendall(f"client-{client_id}\n".encode())
        with client.makefile("rb") as stream:
            replies[client_id] = stream.readline().decode().strip()


def test_listener_keeps_accept_queue(children):
    """Clients that connect before and during the restart are all accepted by the new run."""
    early_clients, late_clients = 5, 5
    child = children.helper("accept_queue.py", str(early_clients + late_clients), stdin=subprocess.PIPE)
    port = child.read_json()["port"]
    replies: dict[int, str] = {}
    errors: list[BaseException] = []

    def run_client(client_id: int) -> None:
        try:
            connect_and_ask(port, client_id, replies)
        except OSError as error:
            errors.append(error)

    # Early clients finish the TCP handshake before the restart begins, so
    # they sit in the accept queue across exec.
    early = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(early_clients)]
    for client_id, sock in enumerate(early):
        sock.sendall(f"client-{client_id}\n".encode())
    child.popen.stdin.write(b"go\n")
    child.popen.stdin.flush()
    late = [threading.Thread(target=run_client, args=(early_clients + n,)) for n in range(late_clients)]
    for thread in late:
        thread.start()

    for client_id, sock in enumerate(early):
        with sock, sock.makefile("rb") as stream:
            replies[client_id] = stream.readline().decode().strip()
    for thread in late:
        thread.join(20)
    second = child.read_json()
    status, _, stderr = child.finish()

    assert errors == []
    assert status == 0, stderr
    assert second["pid"] == child.pid
    for client_id in range(early_clients + late_clients):
        assert replies.get(client_id) == f"client-{client_id} {child.pid}", client_id


#: id -> (fd -> marker of the pipe placed there, order passed to reexec(), fds left open but not passed)
PERMUTATIONS = {
    "identity": ({3: "a", 4: "b", 5: "c"}, [3, 4, 5], []),
    "swap": ({3: "a", 4: "b"}, [4, 3], []),
    "cycle": ({3: "a", 4: "b", 5: "c"}, [4, 5, 3], []),
    "descending high fds": ({7: "a", 8: "b", 9: "c", 10: "d"}, [10, 9, 8, 7], []),
    "mixed": ({3: "a", 5: "b", 20: "c"}, [5, 20, 3], []),
    "targets held by unpassed fds": ({7: "a", 8: "b"}, [8, 7], [3, 4, 5]),
    "one of many": ({3: "a", 4: "b", 5: "c", 6: "d"}, [6], []),
    "from stdin": ({0: "a", 6: "b"}, [6, 0], []),
}


@pytest.mark.parametrize("case", list(PERMUTATIONS))
def test_fds_land_in_passed_order(children, case):
    """Each passed fd arrives on 3 + its index, whatever numbers it had, and nothing else stays open."""
    placements, order, unpassed = PERMUTATIONS[case]
    spec = {"placements": placements, "order": order, "unpassed": unpassed}

    child = children.helper("permute_fds.py", json.dumps(spec))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["landed"] == [[3 + index, placements[fd]] for index, fd in enumerate(order)]
    assert report["open_fds"] == [0, 1, 2, *range(3, 3 + len(order))]
    assert report["stdin"] == "/dev/null"


@pytest.mark.parametrize("options", [pytest.param([], id="sockets only"), pytest.param(["--state"], id="with state")])
def test_listener_timeouts_survive_reexec(children, options):
    """Each listener gets back the gettimeout() it had before reexec(): seconds, None or 0.0.

    With state, the state memfd is passed too, so inherit() reads the fds
    from the kernel and takes only the timeouts from FDPASS_SOCKETS.
    """
    child = children.helper("reexec_timeout.py", *options)
    before = child.read_json()
    after = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert before["timed"] == 2.5
    assert before["blocking"] is None
    assert before["nonblocking"] == 0.0
    for name, timeout in before.items():
        assert after[name]["timeout"] == timeout, name
        assert after[name]["o_nonblock"] is (timeout is not None), name
