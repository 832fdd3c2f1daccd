"""FDPASS_SOCKETS: the family, type, protocol and timeout of each passed socket, written by the old image.

A socket's family, type and protocol never change, and the socket objects
in the old image hold them already. reexec() and upgrade() write them here
so that inherit() can build each socket.socket without asking the kernel
with three system calls per fd. CPython implements a timeout with
O_NONBLOCK, and the kernel keeps only that flag, so this variable is the
only way a timeout reaches the new image.

The variable is private to fdpass. inherit() trusts it only when it names
this process (or, with the ``^`` mark, the generation that started it) and the fd
count of LISTEN_FDS. Otherwise inherit() reads the same facts from the
kernel, and a socket with O_NONBLOCK comes back with timeout 0.0. When the
value leaves an fd undescribed, inherit() reads every fd from the kernel.
It then gives a described socket its timeout only if the kernel reports
O_NONBLOCK and the same family and type.

Format: ``<pid>:<count>:<run>,<run>,...``. pid is the PID of the process
the value is for. ``^<pid>`` names its parent instead, because upgrade()
cannot know the child's PID before the child starts. Each run is
``<family>.<type>.<protocol>.<nonblocking>[/<timeout>]*<repeat>`` for
consecutive sockets that share all of these, or ``-*<repeat>`` for fds that
are not described: not a socket.socket, or a socket of unknown protocol.
nonblocking is 0 for a blocking socket (timeout None) and 1 for one with
O_NONBLOCK. A ``/<timeout>`` suffix, allowed only after 1, gives the
timeout in seconds as a positive float. Without it the socket is
non-blocking (timeout 0.0). fdpass versions older than the suffix, the
``-`` run and the ``^`` mark read such a value as malformed, so they ask
the kernel.

NOTE: inherit() checks each fd's family (the socket constructor reads it
anyway) but takes the type, protocol and blocking mode as written, so an
O_NONBLOCK set behind a blocking socket object's back is not seen. For a
socket with a timeout it checks O_NONBLOCK, and on a blocking fd it asks
the kernel instead.
"""

from __future__ import annotations

import _socket
import itertools
import math
import operator
import socket
from collections.abc import Mapping, Sequence

VARIABLE = "FDPASS_SOCKETS"

_INT_MAX = 2**31 - 1

# CPython stores a timeout as int64 nanoseconds, so settimeout() raises
# OverflowError from about 9.22e9 seconds.
_TIMEOUT_MAX = 9.2e9

# The raw int members of _socket.socket. socket.socket's family and type
# properties wrap them in enums, which costs a Python call per socket.
_FAMILY = _socket.socket.__dict__["family"].__get__
_TYPE = _socket.socket.__dict__["type"].__get__
# socket.socket does not override these two, and attrgetter() reads them
# faster than a descriptor's __get__ does.
_PROTOCOL = operator.attrgetter("proto")
_TIMEOUT = operator.attrgetter("timeout")


# The SO_PROTOCOL value of a socket created with protocol 0, which
# socket.socket stores as 0. An AF_UNIX socket reports 0 itself.
_DEFAULT_PROTOCOLS: dict[tuple[int, int], int] = {
    (socket.AF_INET, socket.SOCK_STREAM): socket.IPPROTO_TCP,
    (socket.AF_INET6, socket.SOCK_STREAM): socket.IPPROTO_TCP,
    (socket.AF_INET, socket.SOCK_DGRAM): socket.IPPROTO_UDP,
    (socket.AF_INET6, socket.SOCK_DGRAM): socket.IPPROTO_UDP,
}


#: (family, type, protocol, timeout) of one socket.
_SocketFacts = tuple[int, int, int, float | None]


def encode(
    items: Sequence[object], pid: int, item_types: set[type] | None = None, *, child: bool = False
) -> str | None:
    """Return the FDPASS_SOCKETS value for items, or None if no item is described.

    item_types is set(map(type, items)), if the caller has it already. With
    child, the value is for a child of pid rather than for pid itself. An
    item that is not a socket.socket, or has protocol 0 in a family and type
    whose real protocol this module does not know, gets a ``-`` run.
    """
    if item_types is None:
        item_types = set(map(type, items))
    if not items:
        return None

    count = len(items)
    if all(issubclass(item_type, socket.socket) for item_type in item_types):
        facts = _socket_facts(items)
    else:
        sockets = [item for item in items if isinstance(item, socket.socket)]
        if not sockets:
            return None
        socket_facts = iter(_socket_facts(sockets))
        facts = [next(socket_facts) if isinstance(item, socket.socket) else None for item in items]

    # Usually every fd is alike, and list.count() checks that in C.
    if facts.count(facts[0]) == count:
        groups = [(facts[0], count)]
    else:
        groups = [(key, len(list(group))) for key, group in itertools.groupby(facts)]

    runs = [_encode_run(key, repeat) for key, repeat in groups]
    if all(run.startswith("-") for run in runs):
        return None
    owner = f"^{pid}" if child else str(pid)
    return f"{owner}:{count}:{','.join(runs)}"


def _socket_facts(sockets: Sequence[object]) -> list[_SocketFacts | None]:
    """Return (family, type, protocol, timeout) for each socket.socket in sockets."""
    families = list(map(_FAMILY, sockets))
    types = list(map(_TYPE, sockets))
    protocols = list(map(_PROTOCOL, sockets))
    timeouts = list(map(_TIMEOUT, sockets))
    return list(zip(families, types, protocols, timeouts, strict=True))


def _encode_run(key: _SocketFacts | None, repeat: int) -> str:
    if key is None:
        return f"-*{repeat}"

    family, sock_type, protocol, timeout = key
    if protocol == 0 and family != socket.AF_UNIX:
        protocol = _DEFAULT_PROTOCOLS.get((family, sock_type), 0)
        if protocol == 0:
            return f"-*{repeat}"

    if timeout is None:
        mode = "0"
    elif timeout == 0.0:
        mode = "1"
    else:
        mode = f"1/{_settable_timeout(timeout)!r}"
    return f"{family}.{sock_type}.{protocol}.{mode}*{repeat}"


def _settable_timeout(timeout: float) -> float:
    """Return a float that settimeout() turns back into timeout, as gettimeout() reports it.

    CPython stores a timeout as whole nanoseconds. settimeout(t) rounds
    t * 1e9 up, and gettimeout() returns ns / 1e9, so on CPython 3.11
    settimeout(gettimeout()) adds 1 ns for about one random timeout in a
    hundred (0.134 is one). This steps down one ulp at a time, at most four
    times, until the round trip gives timeout back.
    """
    candidate = timeout
    for _ in range(4):
        if math.ceil(candidate * 1e9) / 1e9 == timeout:
            return candidate
        candidate = math.nextafter(candidate, 0.0)
    return timeout


def decode(
    environ: Mapping[str, str], pid: int, parent_pid: int, count: int
) -> tuple[list[int], list[int], list[int], list[float | None]] | None:
    """Return (families, types, protocols, timeouts) for count fds passed to pid, or None.

    parent_pid is the PID of the generation that started pid: its
    FDPASS_PARENT_PID, which outlives that generation, or else its
    os.getppid(). An fd that the value does not
    describe gets family, type and protocol -1 and timeout None. A timeout
    is None for a blocking socket, 0.0 for a non-blocking one, or the
    seconds of settimeout(). None means the variable is missing, malformed,
    describes no fd, or was written for another process or fd count, so the
    caller must ask the kernel.
    """
    value = environ.get(VARIABLE)
    if value is None or count == 0:
        return None

    try:
        owner_text, count_text, runs_text = value.split(":")
        owner = parent_pid if owner_text.startswith("^") else pid
        if int(owner_text.removeprefix("^")) != owner or int(count_text) != count:
            return None
        families: list[int] = []
        types: list[int] = []
        protocols: list[int] = []
        timeouts: list[float | None] = []
        for run in runs_text.split(","):
            spec, repeat_text = run.split("*")
            repeat = int(repeat_text)
            if repeat < 1 or len(families) + repeat > count:
                return None
            fact = _decode_spec(spec)
            if fact is None:
                return None
            family, sock_type, protocol, timeout = fact
            families += [family] * repeat
            types += [sock_type] * repeat
            protocols += [protocol] * repeat
            timeouts += [timeout] * repeat
    except ValueError:
        return None

    if len(families) != count or families.count(-1) == count:
        return None
    return families, types, protocols, timeouts


def _decode_spec(spec: str) -> _SocketFacts | None:
    """Return (family, type, protocol, timeout) for one run's text before ``*``, or None if it is malformed.

    Raises:
        ValueError: a field is not a number.
    """
    if spec == "-":
        return -1, -1, -1, None

    socket_text, slash, timeout_text = spec.partition("/")
    family, sock_type, protocol, nonblocking_flag = (int(part) for part in socket_text.split("."))
    # The socket constructor takes C ints and raises OverflowError beyond
    # them. No family, type or protocol is negative.
    if not (0 <= family <= _INT_MAX and 0 <= sock_type <= _INT_MAX and 0 <= protocol <= _INT_MAX):
        return None
    if nonblocking_flag not in (0, 1) or (slash and nonblocking_flag != 1):
        return None
    if not nonblocking_flag:
        return family, sock_type, protocol, None
    if not slash:
        return family, sock_type, protocol, 0.0

    timeout = float(timeout_text)
    # settimeout() raises OverflowError above _TIMEOUT_MAX, and ValueError
    # for NaN or a negative value.
    if not 0.0 < timeout <= _TIMEOUT_MAX:
        return None
    return family, sock_type, protocol, timeout
