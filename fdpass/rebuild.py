"""Turn an inherited fd into the stdlib object that matches it.

A socket becomes a socket.socket built from SO_DOMAIN, SO_TYPE and
SO_PROTOCOL. Any other fd becomes a binary file object opened with the fd's
own access mode. The kernel facts come from one batched C call
(fdpass._native.inspect or inspect_columns), so nothing here issues a system
call per fd other than the constructors' own.
"""

from __future__ import annotations

import _socket
import fcntl
import itertools
import os
import socket
import stat

from fdpass import _log
from fdpass._native import FDINFO_FIELDS, FdInfo
from fdpass._record import Frozen

# typing costs milliseconds to import, and mypy reads this name as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import IO

    #: The object rebuild() returns for one fd.
    FdObject = socket.socket | IO[bytes] | int

# The raw int member under socket.socket's family property, which builds an
# enum per call.
_RAW_FAMILY = _socket.socket.__dict__["family"]

KIND_SOCKET = "socket"
KIND_FIFO = "fifo"
KIND_FILE = "file"
KIND_CHARACTER_DEVICE = "chardev"
KIND_BLOCK_DEVICE = "blockdev"
KIND_DIRECTORY = "directory"
KIND_OTHER = "other"

_KIND_BY_MODE = {
    stat.S_IFSOCK: KIND_SOCKET,
    stat.S_IFIFO: KIND_FIFO,
    stat.S_IFREG: KIND_FILE,
    stat.S_IFCHR: KIND_CHARACTER_DEVICE,
    stat.S_IFBLK: KIND_BLOCK_DEVICE,
    stat.S_IFDIR: KIND_DIRECTORY,
}


class Description(Frozen):
    """An adopted fd: its number, name, kind and, for a socket, its address family."""

    FIELDS = ("fd", "name", "kind", "family", "type", "protocol", "listening")
    __slots__ = FIELDS

    fd: int
    name: str
    kind: str
    family: int
    type: int
    protocol: int
    listening: bool

    def __init__(
        self,
        fd: int,
        name: str,
        kind: str,
        family: int = -1,
        type: int = -1,
        protocol: int = -1,
        listening: bool = False,
    ) -> None:
        self._store(fd, name, kind, family, type, protocol, listening)


def kind_of(info: FdInfo) -> str:
    """Return the KIND_* string for the file type in info.mode."""
    return _KIND_BY_MODE.get(info.mode, KIND_OTHER)


def describe(info: FdInfo, name: str) -> Description:
    """Return the Description of an inspected fd."""
    return Description(
        fd=info.fd,
        name=name,
        kind=kind_of(info),
        family=info.family,
        type=info.type,
        protocol=info.protocol,
        listening=info.listening,
    )


def file_mode(status_flags: int) -> str:
    """Return the binary open() mode that matches O_ACCMODE and O_APPEND."""
    access = status_flags & os.O_ACCMODE
    append = bool(status_flags & os.O_APPEND)

    if access == os.O_RDONLY:
        return "rb"
    if access == os.O_WRONLY:
        return "ab" if append else "wb"
    return "a+b" if append else "r+b"


def _rebuild_socket(info: FdInfo) -> socket.socket:
    nonblocking = bool(info.status_flags & os.O_NONBLOCK)
    if not nonblocking and socket.getdefaulttimeout() is None:
        return socket.socket(info.family, info.type, info.protocol, fileno=info.fd)

    # With SOCK_NONBLOCK in the type, CPython's constructor skips
    # socket.setdefaulttimeout(), which would set O_NONBLOCK on the file
    # description that the passing process shares.
    sock = socket.socket(info.family, info.type | socket.SOCK_NONBLOCK, info.protocol, fileno=info.fd)
    if not nonblocking:
        # NOTE: settimeout(None) issues FIONBIO(0), a no-op on this blocking fd,
        # unless another process sets O_NONBLOCK on it in the meantime.
        sock.settimeout(None)
    return sock


def rebuild(info: FdInfo) -> FdObject:
    """Return a socket.socket or file object that owns info.fd.

    A socket with O_NONBLOCK set comes back in non-blocking mode (timeout 0.0),
    and one without it in blocking mode (timeout None), even when
    socket.setdefaulttimeout() is set, so no system call changes O_NONBLOCK
    on the shared file description. A directory has no file object, so its fd
    comes back as an int.
    """
    kind = kind_of(info)

    if kind == KIND_SOCKET:
        return _rebuild_socket(info)

    if kind == KIND_DIRECTORY:
        return info.fd

    mode = file_mode(info.status_flags)
    # Pipes, FIFOs and devices cannot seek, so a buffered reader over them
    # would report a wrong position; raw FileIO matches the fd exactly.
    buffering = -1 if kind == KIND_FILE else 0
    stream: IO[bytes] = open(info.fd, mode, buffering=buffering, closefd=True)
    return stream


def describe_columns(columns: Mapping[str, list[int]], names: Sequence[str]) -> tuple[Description, ...]:
    """Return the Description of every fd in fdpass._native.inspect_columns() output.

    names[i] is the name of column i.
    """
    return tuple(
        Description(fd, name, _KIND_BY_MODE.get(mode, KIND_OTHER), family, sock_type, protocol, bool(listening))
        for fd, name, mode, family, sock_type, protocol, listening in zip(
            columns["fd"], names, columns["mode"], columns["family"], columns["type"], columns["protocol"],
            columns["listening"], strict=True,
        )
    )


def rebuild_columns(columns: Mapping[str, list[int]]) -> list[FdObject]:
    """Return rebuild() of every fd in fdpass._native.inspect_columns() output, in order.

    When every fd is a socket, which is the usual case, one map() over the
    columns builds them all, with no Python code run per fd.
    """
    modes = columns["mode"]

    # With socket.setdefaulttimeout() set, each socket needs the steps of
    # _rebuild_socket(), so only the plain case takes the map().
    if modes.count(stat.S_IFSOCK) == len(modes) and socket.getdefaulttimeout() is None:
        nonblocking = socket.SOCK_NONBLOCK
        types = [
            sock_type | nonblocking if status_flags & os.O_NONBLOCK else sock_type
            for sock_type, status_flags in zip(columns["type"], columns["status_flags"], strict=True)
        ]
        return list(map(socket.socket, columns["family"], types, columns["protocol"], columns["fd"]))

    return [
        rebuild(FdInfo(fd, error, fd_flags, status_flags, mode, family, sock_type, protocol, bool(listening)))
        for fd, error, fd_flags, status_flags, mode, family, sock_type, protocol, listening in zip(
            *(columns[name] for name in FDINFO_FIELDS), strict=True
        )
    ]


def rebuild_sockets(
    fds: Sequence[int], families: Sequence[int], types: Sequence[int], protocols: Sequence[int],
    timeouts: Sequence[float | None],
) -> list[socket.socket]:
    """Return a socket.socket for each fd, built from the type, protocol and timeout given for it.

    timeouts[i] is None for a blocking socket, 0.0 for a non-blocking one,
    as O_NONBLOCK gives in rebuild(), or the seconds for settimeout().
    Each socket with seconds costs two system calls: F_GETFL checks that its
    fd has O_NONBLOCK, so that settimeout()'s FIONBIO(1) changes nothing on
    an fd that another process shares.
    The constructor reads each fd's family with getsockname(), which it calls
    anyway, and that family must equal families[i]. The type and protocol are
    taken as given, which saves two system calls per fd.

    Raises:
        OSError: an fd is not a socket.
        ValueError: an fd's family differs from families[i], or an fd given
            seconds is blocking.
        In both cases every socket built is detached, so no fd is closed.
    """
    count = len(timeouts)
    blocking_count = timeouts.count(None)
    # list.count() compares in C, so no Python code runs per fd here.
    timed_count = count - blocking_count - timeouts.count(0.0)

    # As in _rebuild_socket(): with socket.setdefaulttimeout() set, every
    # socket is built with SOCK_NONBLOCK, so the constructor does not set
    # O_NONBLOCK on the shared file description, and a blocking one then gets
    # settimeout(None).
    default_timeout = socket.getdefaulttimeout() is not None
    if default_timeout or blocking_count == 0:
        types = [sock_type | socket.SOCK_NONBLOCK for sock_type in types]
    elif blocking_count != count:
        types = [
            sock_type if timeout is None else sock_type | socket.SOCK_NONBLOCK
            for sock_type, timeout in zip(types, timeouts, strict=True)
        ]

    built: list[socket.socket] = []
    try:
        # list.extend() keeps what map() built before a failure, so it can be detached.
        built.extend(map(socket.socket, itertools.repeat(-1), types, protocols, fds))
        if list(map(_RAW_FAMILY.__get__, built)) != list(families):
            raise ValueError("a passed socket's family differs from the family given for it")
        if timed_count:
            for sock, timeout in zip(built, timeouts, strict=True):
                if not timeout:
                    continue
                if not fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK:
                    raise ValueError(f"fd {sock.fileno()} is blocking, but a timeout of {timeout} s is given for it")
                sock.settimeout(timeout)
    except (OSError, ValueError):
        for sock in built:
            sock.detach()
        raise

    if default_timeout and blocking_count:
        for sock, timeout in zip(built, timeouts, strict=True):
            if timeout is None:
                sock.settimeout(None)
    return built


def restore_timeouts(
    objects: Sequence[FdObject], columns: Mapping[str, list[int]], families: Sequence[int], types: Sequence[int],
    timeouts: Sequence[float | None],
) -> None:
    """Give each socket rebuilt by rebuild_columns() the positive timeout given for it.

    A socket keeps the timeout 0.0 that rebuild() gave it unless the kernel
    reports O_NONBLOCK and the family and type given for it, so a timeout
    never sets O_NONBLOCK on an fd that did not have it. The arguments are
    rebuild_columns()'s output, its inspect_columns() input, and
    _socket_env.decode()'s families, types and timeouts.
    """
    # A loop in Python only when some socket has a positive timeout.
    if timeouts.count(None) + timeouts.count(0.0) == len(timeouts):
        return

    facts = zip(
        objects, columns["mode"], columns["status_flags"], columns["family"], columns["type"], families, types,
        timeouts, strict=True,
    )
    for item, mode, status_flags, family, sock_type, given_family, given_type, timeout in facts:
        if not timeout or mode != stat.S_IFSOCK or not status_flags & os.O_NONBLOCK:
            continue
        if (family, sock_type) != (given_family, given_type) or not isinstance(item, socket.socket):
            continue
        try:
            item.settimeout(timeout)
        except OSError as error:
            _log.warning("fd %d keeps timeout 0.0: settimeout(%r) failed: %s", item.fileno(), timeout, error)
