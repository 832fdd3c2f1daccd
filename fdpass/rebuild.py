"""Turn an inherited fd into the stdlib object that matches it.

A socket becomes a socket.socket built from SO_DOMAIN, SO_TYPE and
SO_PROTOCOL. Any other fd becomes a binary file object opened with the fd's
own access mode. The kernel facts come from one batched C call
(fdpass._native.inspect), so nothing here issues a system call per fd.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from typing import IO

from fdpass._native import FdInfo

#: The object rebuild() returns for one fd.
FdObject = socket.socket | IO[bytes] | int

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


@dataclass(frozen=True)
class Description:
    """An adopted fd: its number, name, kind and, for a socket, its address family."""

    fd: int
    name: str
    kind: str
    family: int = -1
    type: int = -1
    protocol: int = -1
    listening: bool = False


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


def rebuild(info: FdInfo) -> FdObject:
    """Return a socket.socket or file object that owns info.fd.

    A socket with O_NONBLOCK set comes back in non-blocking mode (timeout 0.0).
    The constructor gets SOCK_NONBLOCK for that, so no system call changes the
    shared file description. A directory has no file object, so its fd
    comes back as an int.
    """
    kind = kind_of(info)

    if kind == KIND_SOCKET:
        sock_type = info.type
        if info.status_flags & os.O_NONBLOCK:
            sock_type |= socket.SOCK_NONBLOCK
        # NOTE: with socket.setdefaulttimeout() set, CPython's constructor turns
        # on O_NONBLOCK itself, which the process that passed the fd shares.
        return socket.socket(info.family, sock_type, info.protocol, fileno=info.fd)

    if kind == KIND_DIRECTORY:
        return info.fd

    mode = file_mode(info.status_flags)
    # Pipes, FIFOs and devices cannot seek, so a buffered reader over them
    # would report a wrong position; raw FileIO matches the fd exactly.
    buffering = -1 if kind == KIND_FILE else 0
    stream: IO[bytes] = open(info.fd, mode, buffering=buffering, closefd=True)
    return stream
