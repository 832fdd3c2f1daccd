"""Socket addresses for listen(): parse them, match them against bound sockets, bind new ones."""

from __future__ import annotations

import errno
import os
import socket
import stat

from fdpass import _log
from fdpass._record import Frozen

#: An address listen() accepts: (host, port), a Unix socket path, or a
#: NUL-prefixed abstract Unix name.
Address = tuple[str, int] | tuple[str, int, int, int] | str | bytes | os.PathLike[str]

_SOCKET_TYPES: dict[int, str] = {
    socket.SOCK_STREAM: "SOCK_STREAM",
    socket.SOCK_DGRAM: "SOCK_DGRAM",
    socket.SOCK_SEQPACKET: "SOCK_SEQPACKET",
}


# sizeof(sockaddr_un.sun_path) on Linux, including the terminating NUL of a path.
_SUN_PATH_SIZE = 108


class Target(Frozen):
    """A resolved listen() address: family, type and the sockaddr to bind."""

    FIELDS = ("original", "family", "type", "sockaddr")
    __slots__ = FIELDS

    original: object
    family: int
    type: int
    sockaddr: tuple[object, ...] | bytes

    def __init__(self, original: object, family: int, type: int, sockaddr: tuple[object, ...] | bytes) -> None:
        self._store(original, family, type, sockaddr)

    @property
    def any_port(self) -> bool:
        return self.family in (socket.AF_INET, socket.AF_INET6) and self.sockaddr[1] == 0


def type_name(sock_type: int) -> str:
    return _SOCKET_TYPES.get(sock_type, str(sock_type))


def _resolve_inet(address: tuple[object, ...], sock_type: int) -> Target:
    if len(address) not in (2, 4):
        raise ValueError(f"address {address!r} must be (host, port) or (host, port, flowinfo, scope_id)")
    host, port = address[0], address[1]
    if not isinstance(host, str):
        raise TypeError(f"host in address {address!r} must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port in address {address!r} must be an int from 0 to 65535")
    # getaddrinfo() would read the host only up to the NUL and bind there.
    if "\0" in host:
        raise ValueError(f"host in address {address!r} contains a NUL character; give an IP address or a host name")

    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, sock_type, 0, socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except socket.gaierror as error:
        raise ValueError(f"host {host!r} in address {address!r} does not resolve: {error.strerror}") from None

    family, _, _, _, resolved = infos[0]
    sockaddr: tuple[object, ...] = tuple(resolved)
    if family == socket.AF_INET6 and len(address) == 4:
        sockaddr = (resolved[0], port, address[2], address[3])
    return Target(address, family, sock_type, sockaddr)


def _resolve_unix(address: str | bytes | os.PathLike[str], sock_type: int) -> Target:
    path = os.fsencode(address)
    if not path:
        raise ValueError("Unix socket address is empty; give a path, or a NUL-prefixed abstract name")

    if b"\0" in path and not path.startswith(b"\0"):
        raise ValueError(
            f"Unix socket path {address!r} contains a NUL byte; a path cannot, and an abstract name starts with NUL"
        )

    limit = _SUN_PATH_SIZE if path.startswith(b"\0") else _SUN_PATH_SIZE - 1
    if len(path) > limit:
        raise ValueError(f"Unix socket address {address!r} is {len(path)} bytes; Linux allows at most {limit}")
    return Target(address, socket.AF_UNIX, sock_type, path)


def resolve(address: Address, sock_type: int) -> Target:
    """Return the Target for address and socket type, or raise TypeError/ValueError naming it."""
    if sock_type not in _SOCKET_TYPES:
        raise ValueError(f"type must be SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET, not {sock_type!r}")

    if isinstance(address, tuple):
        if sock_type == socket.SOCK_SEQPACKET:
            raise ValueError(f"SOCK_SEQPACKET needs a Unix socket address, not {address!r}")
        return _resolve_inet(address, sock_type)
    if isinstance(address, (str, bytes, os.PathLike)):
        return _resolve_unix(address, sock_type)
    raise TypeError(
        f"address must be (host, port), a Unix socket path or a NUL-prefixed abstract name, "
        f"not {type(address).__name__}: {address!r}"
    )


def _unix_names_match(bound: object, expected: bytes) -> bool:
    bound_bytes = os.fsencode(bound) if isinstance(bound, (str, bytes)) else b""
    if bound_bytes == expected:
        return True
    if expected.startswith(b"\0") or not bound_bytes or bound_bytes.startswith(b"\0"):
        return False
    return os.path.abspath(bound_bytes) == os.path.abspath(expected)


def matches_bound_address(sock: socket.socket, target: Target, listening: bool | None) -> bool:
    """Return True if sock has target's family and type and is bound to its address.

    For stream and seqpacket sockets, listening=False rejects the socket, since
    an accepted connection shares its listener's local address; None skips
    that check.
    """
    if sock.fileno() == -1 or sock.family != target.family or sock.type != target.type:
        return False
    if listening is False and target.type != socket.SOCK_DGRAM:
        return False

    try:
        bound = sock.getsockname()
    except OSError as error:
        _log.debug("fd %d: getsockname() failed (%s), so it cannot match %r", sock.fileno(), error, target.original)
        return False

    if target.family == socket.AF_UNIX:
        assert isinstance(target.sockaddr, bytes)
        return _unix_names_match(bound, target.sockaddr)

    expected = target.sockaddr
    assert isinstance(expected, tuple)
    if bound[0] != expected[0]:
        return False
    return target.any_port or bound[1] == expected[1]


def _remove_stale_unix_socket(path: bytes, target: Target) -> None:
    # A socket file left by a process that is gone would make bind() fail with
    # EADDRINUSE. Remove it only if nothing accepts connections on it.
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(
            errno.EADDRINUSE,
            f"cannot bind Unix socket {target.original!r}: the path exists and is not a socket; "
            "remove it or pick another path",
        )

    # Non-blocking, because a blocking connect() to a live server whose accept
    # queue is full waits until that server accepts, which may be never.
    probe = socket.socket(socket.AF_UNIX, target.type)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        _log.info("removed stale Unix socket %s: nothing accepts connections on it", os.fsdecode(path))
        return
    except BlockingIOError:
        # EAGAIN or EINPROGRESS: a server listens there and its accept queue is full.
        pass
    except OSError as error:
        # bind() reports the real problem, if there is one, with the address.
        _log.debug("cannot probe Unix socket %s (%s); binding anyway", os.fsdecode(path), error)
        return
    finally:
        probe.close()
    raise OSError(
        errno.EADDRINUSE,
        f"cannot bind Unix socket {target.original!r}: another process is accepting connections on it",
    )


def bind_new_socket(target: Target, backlog: int | None) -> socket.socket:
    """Create a socket for target, bind it and, for stream and seqpacket, listen.

    Raises OSError whose message names the address and the socket type.
    """
    sock = socket.socket(target.family, target.type)
    try:
        if target.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        elif isinstance(target.sockaddr, bytes) and not target.sockaddr.startswith(b"\0"):
            _remove_stale_unix_socket(target.sockaddr, target)

        sock.bind(target.sockaddr)
        if target.type != socket.SOCK_DGRAM:
            sock.listen(socket.SOMAXCONN if backlog is None else backlog)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE and "cannot bind" in str(error):
            raise
        raise OSError(
            error.errno,
            f"cannot bind {type_name(target.type)} socket to {target.original!r}: {error.strerror}",
        ) from None

    return sock
