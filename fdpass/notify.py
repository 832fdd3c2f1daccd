"""sd_notify(3) for service managers: send state changes to NOTIFY_SOCKET.

The protocol is one datagram of newline-separated ``KEY=VALUE`` assignments,
sent to the AF_UNIX socket named in NOTIFY_SOCKET. A name that starts with
``@`` is a Linux abstract socket address, with ``@`` standing for the leading
NUL byte. This module uses the socket module only, so it needs no libsystemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

#: The environment variable that names the service manager's socket.
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify_address(value: str) -> str | bytes:
    """Return the sendto() address for a NOTIFY_SOCKET value.

    Raises:
        ValueError: value is neither an absolute path nor an ``@`` abstract
            name. systemd's ``vsock:`` addresses are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value == "@":
        raise ValueError(f"{NOTIFY_SOCKET}='@' names no socket: an abstract name needs a character after '@'")
    raise ValueError(
        f"{NOTIFY_SOCKET}={value!r} is not supported: expected an absolute socket path "
        "or an abstract name starting with '@'"
    )


def _encode(assignments: tuple[str, ...]) -> bytes:
    if not assignments:
        raise ValueError("notify() needs at least one KEY=VALUE assignment, such as 'READY=1'")

    for assignment in assignments:
        if not isinstance(assignment, str):
            raise TypeError(f"notify() assignments must be str, not {type(assignment).__name__}: {assignment!r}")
        key, separator, _ = assignment.partition("=")
        if not separator or not key or "\n" in assignment:
            raise ValueError(f"invalid notify assignment {assignment!r}: expected one line of KEY=VALUE")

    return "\n".join(assignments).encode() + b"\n"


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send the assignments, such as ``"READY=1"``, to NOTIFY_SOCKET as one datagram.

    Args:
        assignments: one or more ``KEY=VALUE`` strings without newlines.
        environ: where to read NOTIFY_SOCKET; None means os.environ.

    Returns:
        True if the datagram was sent, False if NOTIFY_SOCKET is unset or
        empty, which means no service manager is listening.

    Raises:
        TypeError, ValueError: an assignment or the NOTIFY_SOCKET value is
            malformed.
        OSError: sendto() failed, for example because the socket is gone.
    """
    message = _encode(assignments)
    value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
    if not value:
        return False
    address = notify_address(value)

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message, address)

    return True


def monotonic_usec() -> int:
    """Return CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC is read against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(environ: Mapping[str, str] | None = None) -> bool:
    """Send READY=1: start-up is finished, or a reload is."""
    return notify("READY=1", environ=environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    """Send RELOADING=1 with MONOTONIC_USEC, as systemd 253 and later expect for Type=notify-reload."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", environ=environ)


def main_pid(pid: int, environ: Mapping[str, str] | None = None) -> bool:
    """Send MAINPID=pid and READY=1: pid has taken over as the service's main process."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"MAINPID must be a positive process ID, not {pid!r}")
    return notify(f"MAINPID={pid}", "READY=1", environ=environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Send STOPPING=1: the service is shutting down."""
    return notify("STOPPING=1", environ=environ)
