"""FDPASS_SOCKETS: the family, type and protocol of each passed socket, written by the old image.

A socket's family, type and protocol never change, and the socket objects
in the old image hold them already. reexec() writes them here so that
inherit() can build each socket.socket without asking the kernel with three
system calls per fd. The variable is private to fdpass. inherit() trusts it
only when it names this process and the fd count of LISTEN_FDS. Otherwise it
reads the same facts from the kernel.

Format: ``<pid>:<count>:<run>,<run>,...``, where each run is
``<family>.<type>.<protocol>.<nonblocking>*<repeat>`` for consecutive fds
that share all four. nonblocking is 1 for a socket with a timeout, which
CPython implements with O_NONBLOCK, and 0 otherwise.

NOTE: inherit() checks each fd's family (the socket constructor reads it
anyway) but takes the type, protocol and blocking mode as written, so an
O_NONBLOCK changed behind the socket object's back is not seen.
"""

from __future__ import annotations

import _socket
import itertools
import operator
import socket
from collections.abc import Mapping, Sequence

VARIABLE = "FDPASS_SOCKETS"

_INT_MAX = 2**31 - 1

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
_DEFAULT_PROTOCOLS = {
    (socket.AF_INET, socket.SOCK_STREAM): socket.IPPROTO_TCP,
    (socket.AF_INET6, socket.SOCK_STREAM): socket.IPPROTO_TCP,
    (socket.AF_INET, socket.SOCK_DGRAM): socket.IPPROTO_UDP,
    (socket.AF_INET6, socket.SOCK_DGRAM): socket.IPPROTO_UDP,
}


def encode(items: Sequence[object], pid: int, item_types: set[type] | None = None) -> str | None:
    """Return the FDPASS_SOCKETS value for items, or None.

    item_types is set(map(type, items)), if the caller has it already.
    None means an item is not a socket.socket, or has protocol 0 in a family
    and type whose real protocol this module does not know.
    """
    if item_types is None:
        item_types = set(map(type, items))
    if not items or not all(issubclass(item_type, socket.socket) for item_type in item_types):
        return None

    count = len(items)
    families = list(map(_FAMILY, items))
    types = list(map(_TYPE, items))
    protocols = list(map(_PROTOCOL, items))
    timeouts = list(map(_TIMEOUT, items))
    if timeouts.count(None) == count:
        nonblocking = [False] * count
    else:
        nonblocking = list(map(operator.is_not, timeouts, itertools.repeat(None)))

    # Usually every socket is alike, and list.count() checks that in C.
    columns = (families, types, protocols, nonblocking)
    if all(column.count(column[0]) == count for column in columns):
        groups = [((families[0], types[0], protocols[0], nonblocking[0]), count)]
    else:
        facts = zip(families, types, protocols, nonblocking, strict=True)
        groups = [(key, len(list(group))) for key, group in itertools.groupby(facts)]

    runs = []
    for (family, sock_type, protocol, is_nonblocking), repeat in groups:
        if protocol == 0 and family != socket.AF_UNIX:
            protocol = _DEFAULT_PROTOCOLS.get((family, sock_type), 0)
            if protocol == 0:
                return None
        runs.append(f"{family}.{sock_type}.{protocol}.{int(is_nonblocking)}*{repeat}")

    return f"{pid}:{len(items)}:{','.join(runs)}"


def decode(
    environ: Mapping[str, str], pid: int, count: int
) -> tuple[list[int], list[int], list[int], list[bool]] | None:
    """Return (families, types, protocols, nonblocking) for count fds passed to pid, or None.

    None means the variable is missing, malformed, or written for another
    process or fd count, so the caller must ask the kernel.
    """
    value = environ.get(VARIABLE)
    if value is None or count == 0:
        return None

    try:
        pid_text, count_text, runs_text = value.split(":")
        if int(pid_text) != pid or int(count_text) != count:
            return None
        families: list[int] = []
        types: list[int] = []
        protocols: list[int] = []
        nonblocking: list[bool] = []
        for run in runs_text.split(","):
            spec, repeat_text = run.split("*")
            family, sock_type, protocol, nonblocking_flag = (int(part) for part in spec.split("."))
            repeat = int(repeat_text)
            if repeat < 1 or len(families) + repeat > count or nonblocking_flag not in (0, 1):
                return None
            # The socket constructor takes C ints and raises OverflowError
            # beyond them; no family, type or protocol is negative.
            if not (0 <= family <= _INT_MAX and 0 <= sock_type <= _INT_MAX and 0 <= protocol <= _INT_MAX):
                return None
            families += [family] * repeat
            types += [sock_type] * repeat
            protocols += [protocol] * repeat
            nonblocking += [bool(nonblocking_flag)] * repeat
    except ValueError:
        return None

    if len(families) != count:
        return None
    return families, types, protocols, nonblocking
