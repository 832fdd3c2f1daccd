"""Open one fd of every kind, restart, and report what the new run adopted.

Usage: socket_kinds.py WORK_DIR

The first run opens TCP and UDP sockets over IPv4 and IPv6, Unix stream,
datagram and seqpacket sockets (listening, bound and connected, by path,
abstract name and socketpair), pipes and regular files under WORK_DIR. It
queues data on the connected ones, prints one JSON line describing every fd
and calls fdpass.reexec() with all of them by name. The new run prints the
same description, computed from the objects fdpass.inherit() returned, then
a JSON line with what it read from and sent over them.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import fdpass


def encode_address(address: object) -> object:
    if isinstance(address, bytes):
        return {"bytes": address.hex()}
    if isinstance(address, tuple):
        return list(address)
    return address


def describe_socket(sock: socket.socket) -> dict[str, object]:
    try:
        peer = encode_address(sock.getpeername())
    except OSError:
        peer = None
    return {
        "object": "socket",
        "family": int(sock.family),
        "type": int(sock.type),
        "proto": sock.proto,
        "so_domain": sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN),
        "so_type": sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
        "so_protocol": sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
        "listening": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
        "blocking": os.get_blocking(sock.fileno()),
        "timeout": sock.gettimeout(),
        "sockname": encode_address(sock.getsockname()),
        "peername": peer,
    }


def describe(obj: object) -> dict[str, object]:
    if isinstance(obj, socket.socket):
        return describe_socket(obj)
    fd = obj.fileno()  # type: ignore[attr-defined]
    return {
        "object": "file",
        "readable": obj.readable(),  # type: ignore[attr-defined]
        "writable": obj.writable(),  # type: ignore[attr-defined]
        "inode": os.fstat(fd).st_ino,
        "position": os.lseek(fd, 0, os.SEEK_CUR) if obj.seekable() else None,  # type: ignore[attr-defined]
    }


def connected_tcp_pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    with socket.create_server((host, 0), family=family) as server:
        client = socket.create_connection(server.getsockname()[:2], timeout=10)
        accepted, _ = server.accept()
    return client, accepted


def same_port_tcp_and_udp() -> tuple[socket.socket, socket.socket]:
    # TCP and UDP ports are separate spaces, but the UDP port may be taken by
    # another program, so try a few TCP ports.
    for _ in range(50):
        tcp = socket.create_server(("127.0.0.1", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(tcp.getsockname())
        except OSError:
            tcp.close()
            udp.close()
            continue
        return tcp, udp
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1 after 50 tries")


def open_everything(work_dir: str) -> dict[str, object]:
    fds: dict[str, object] = {}

    fds["tcp4_listen"] = socket.create_server(("127.0.0.1", 0))
    fds["tcp6_listen"] = socket.create_server(("::1", 0), family=socket.AF_INET6)
    fds["tcp4_client"], fds["tcp4_accepted"] = connected_tcp_pair(socket.AF_INET, "127.0.0.1")
    fds["tcp6_client"], fds["tcp6_accepted"] = connected_tcp_pair(socket.AF_INET6, "::1")
    fds["same_port_tcp"], fds["same_port_udp"] = same_port_tcp_and_udp()

    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("127.0.0.1", 0))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    udp6.setblocking(False)
    udp4_connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4_connected.connect(udp4.getsockname())
    fds.update(udp4=udp4, udp6=udp6, udp4_connected=udp4_connected)

    unix_stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_stream.bind(os.path.join(work_dir, "stream.sock"))
    unix_stream.listen()
    unix_dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix_dgram.bind(os.path.join(work_dir, "dgram.sock"))
    unix_seqpacket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    unix_seqpacket.bind(os.path.join(work_dir, "seqpacket.sock"))
    unix_seqpacket.listen()
    unix_abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_abstract.bind(f"\0fdpass-test-{os.getpid()}".encode())
    unix_abstract.listen()
    unix_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_client.connect(os.path.join(work_dir, "stream.sock"))
    unix_accepted, _ = unix_stream.accept()
    unix_seqpacket_client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    unix_seqpacket_client.connect(os.path.join(work_dir, "seqpacket.sock"))
    unix_seqpacket_accepted, _ = unix_seqpacket.accept()
    fds.update(
        unix_stream=unix_stream,
        unix_dgram=unix_dgram,
        unix_seqpacket=unix_seqpacket,
        unix_abstract=unix_abstract,
        unix_client=unix_client,
        unix_accepted=unix_accepted,
        unix_seqpacket_client=unix_seqpacket_client,
        unix_seqpacket_accepted=unix_seqpacket_accepted,
    )

    pair_types = (("stream", socket.SOCK_STREAM), ("dgram", socket.SOCK_DGRAM), ("seqpacket", socket.SOCK_SEQPACKET))
    for kind, sock_type in pair_types:
        fds[f"pair_{kind}_a"], fds[f"pair_{kind}_b"] = socket.socketpair(socket.AF_UNIX, sock_type)

    read_end, write_end = os.pipe()
    fds["pipe_read"] = os.fdopen(read_end, "rb", buffering=0)
    fds["pipe_write"] = os.fdopen(write_end, "wb", buffering=0)

    with open(os.path.join(work_dir, "data.txt"), "wb") as data:
        data.write(b"0123456789")
    fds["file_read"] = open(os.path.join(work_dir, "data.txt"), "rb", buffering=0)
    fds["file_read"].seek(4)
    fds["file_append"] = open(os.path.join(work_dir, "log.txt"), "ab", buffering=0)
    fds["file_update"] = open(os.path.join(work_dir, "data.txt"), "r+b", buffering=0)
    return fds


def queue_data(fds: dict[str, object]) -> None:
    fds["tcp4_client"].sendall(b"tcp4 before restart")
    fds["tcp6_accepted"].sendall(b"tcp6 before restart")
    fds["unix_client"].sendall(b"unix before restart")
    fds["unix_seqpacket_client"].send(b"seqpacket before restart")
    fds["udp4_connected"].send(b"udp4 before restart")
    fds["pair_stream_a"].sendall(b"pair stream before restart")
    fds["pair_dgram_a"].send(b"pair dgram before restart")
    fds["pair_seqpacket_a"].send(b"pair seqpacket before restart")
    fds["pipe_write"].write(b"pipe before restart")
    fds["file_append"].write(b"first run\n")


def exchange_after_restart(inherited: fdpass.Inherited, work_dir: str) -> dict[str, object]:
    for obj in inherited.objects:
        if isinstance(obj, socket.socket):
            obj.settimeout(10)

    received = {
        "tcp4": inherited["tcp4_accepted"].recv(100).decode(),
        "tcp6": inherited["tcp6_client"].recv(100).decode(),
        "unix": inherited["unix_accepted"].recv(100).decode(),
        "seqpacket": inherited["unix_seqpacket_accepted"].recv(100).decode(),
        "pair_stream": inherited["pair_stream_b"].recv(100).decode(),
        "pair_dgram": inherited["pair_dgram_b"].recv(100).decode(),
        "pair_seqpacket": inherited["pair_seqpacket_b"].recv(100).decode(),
        "pipe": inherited["pipe_read"].read(100).decode(),
        "file_read": inherited["file_read"].read().decode(),
    }
    data, sender = inherited["udp4"].recvfrom(100)
    received["udp4"] = data.decode()
    received["udp4_sender_is_connected_socket"] = sender == inherited["udp4_connected"].getsockname()

    # Each listener still accepts: connect to it and accept the connection.
    accepted = {}
    for name in ("tcp4_listen", "tcp6_listen", "same_port_tcp", "unix_stream", "unix_seqpacket", "unix_abstract"):
        listener = inherited[name]
        with socket.socket(listener.family, listener.type) as client:
            client.connect(listener.getsockname())
            conn, _ = listener.accept()
            client.sendall(b"ping")
            accepted[name] = conn.recv(10).decode()
            conn.close()

    # Send the other way over the connected sockets.
    inherited["tcp4_accepted"].sendall(b"reply")
    inherited["unix_accepted"].sendall(b"reply")
    replies = {
        "tcp4": inherited["tcp4_client"].recv(10).decode(),
        "unix": inherited["unix_client"].recv(10).decode(),
    }

    inherited["file_append"].write(b"second run\n")
    inherited["file_append"].flush()
    with open(os.path.join(work_dir, "log.txt"), "rb") as log_file:
        log_text = log_file.read().decode()
    return {"received": received, "accepted": accepted, "replies": replies, "log": log_text}


def main() -> None:
    work_dir = sys.argv[1]
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" not in os.environ:
        fds = open_everything(work_dir)
        queue_data(fds)
        print(json.dumps({name: describe(obj) for name, obj in fds.items()}), flush=True)
        fdpass.reexec(fds, env={**os.environ, "HELPER_RESTARTED": "1"})

    names = [description.name for description in inherited.descriptions]
    print(json.dumps({name: describe(inherited[name]) for name in names}), flush=True)
    print(json.dumps(exchange_after_restart(inherited, work_dir)), flush=True)


if __name__ == "__main__":
    main()
