"""Application state handed to the next run in a sealed memfd.

reexec(state=...) and Upgrader.upgrade(state=...) write the bytes into an
anonymous memory file and pass its fd under the name STATE_FD_NAME, so the
size is limited by memory, not by the environment's ARG_MAX. The file is
sealed against writes and resizing before it is passed, so the next run reads
exactly the bytes that were written. fdpass.inherited_state() reads it back.
"""

from __future__ import annotations

import fcntl
import os

#: The LISTEN_FDNAMES name of the memfd that carries the state.
STATE_FD_NAME = "fdpass-state"

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def to_bytes(state: object) -> bytes:
    """Return state as bytes, or raise TypeError naming its type."""
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise TypeError(f"state must be bytes, bytearray or memoryview, not {type(state).__name__}")
    return bytes(state)


def create_state_fd(state: bytes) -> int:
    """Return a sealed memfd, with FD_CLOEXEC set, that contains state.

    Raises:
        OSError: memfd_create, write or F_ADD_SEALS failed; no fd is left open.
    """
    fd = os.memfd_create(STATE_FD_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(state)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise

    return fd


def is_state_fd(fd: int) -> bool:
    """Return True if fd is readable and carries every seal that create_state_fd() adds, as only a memfd can."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        access_mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False  # EINVAL: a pipe, socket or file that takes no seals
    return seals & _SEALS == _SEALS and access_mode != os.O_WRONLY


def read_state_fd(fd: int) -> bytes:
    """Return the whole content of the file behind fd, read from offset 0.

    pread() leaves the file offset alone, which the passing process shares.
    """
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0

    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)

    return b"".join(chunks)
