"""The systemd socket-activation protocol: LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES.

This module encodes and decodes the environment variables only. It opens,
closes and inspects no fd, and imports nothing else from fdpass, so it can be
tested without starting a process. The rules follow sd_listen_fds(3) from
systemd 252:

- the passed fds are 3, 4, ... 3 + LISTEN_FDS - 1;
- LISTEN_PID names the process the fds are meant for;
- LISTEN_FDNAMES is a colon-separated list with one name per fd. A name is at
  most 255 characters, of printable ASCII other than ':'. When the variable is
  absent, every fd is named "unknown".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping

LISTEN_FDS = "LISTEN_FDS"
LISTEN_PID = "LISTEN_PID"
LISTEN_FDNAMES = "LISTEN_FDNAMES"
LISTEN_PIDFDID = "LISTEN_PIDFDID"

#: Every variable of the protocol, including systemd 254's LISTEN_PIDFDID.
VARIABLES = (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, LISTEN_PIDFDID)

#: SD_LISTEN_FDS_START: the first passed fd.
FIRST_FD = 3

#: The name systemd gives an fd that has none.
DEFAULT_NAME = "unknown"

#: FDNAME_MAX in systemd's fdname_is_valid().
MAX_NAME_LENGTH = 255

#: A LISTEN_FDS above this cannot be real: it is the Linux kernel's hard
#: ceiling on fds per process (fs.nr_open defaults to 1048576).
MAX_FDS = 1 << 20


class ListenEnv:
    """The decoded LISTEN_* variables: the passed fds in order, with their names.

    Immutable, and equal to another ListenEnv with the same fds and names.
    """

    # A plain class and not a dataclass: importing dataclasses costs about
    # 10 ms, which every restart would pay.
    __slots__ = ("fds", "names")

    fds: tuple[int, ...]
    names: tuple[str, ...]

    def __init__(self, fds: tuple[int, ...], names: tuple[str, ...]) -> None:
        object.__setattr__(self, "fds", fds)
        object.__setattr__(self, "names", names)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: ListenEnv is immutable")

    def __repr__(self) -> str:
        return f"ListenEnv(fds={self.fds!r}, names={self.names!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ListenEnv):
            return NotImplemented
        return (self.fds, self.names) == (other.fds, other.names)

    def __hash__(self) -> int:
        return hash((self.fds, self.names))


def validate_name(name: object) -> str:
    """Return name unchanged if systemd would accept it as an fd name.

    The empty name is valid: systemd's fdname_is_valid() (src/basic/fd-util.c)
    accepts it explicitly.

    Raises:
        TypeError: name is not a str.
        ValueError: name is too long or contains ':' or a character outside
            printable ASCII; the message quotes the name.
    """
    if not isinstance(name, str):
        raise TypeError(f"fd name must be a str, not {type(name).__name__}: {name!r}")

    # Over ASCII, str.isprintable() accepts exactly " " to "~".
    if len(name) <= MAX_NAME_LENGTH and name.isascii() and name.isprintable() and ":" not in name:
        return name
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"fd name {name[:40]!r}... is {len(name)} characters long; "
            f"LISTEN_FDNAMES allows at most {MAX_NAME_LENGTH}"
        )
    for char in name:
        if char == ":":
            raise ValueError(f"fd name {name!r} contains ':', which separates names in LISTEN_FDNAMES")
        if not " " <= char <= "~":
            raise ValueError(
                f"fd name {name!r} contains {char!r}; LISTEN_FDNAMES allows only printable ASCII"
            )

    return name


def encode(names: Iterable[str], pid: int) -> dict[str, str]:
    """Return the LISTEN_* variables that pass one fd per name to process pid.

    The fds themselves must already sit on 3, 4, ... in the order of names.
    Each name is checked with validate_name().
    """
    checked = list(names)
    # Check each distinct name once: thousands of fds usually share a few
    # names, and often one, which list.count() finds without hashing.
    if checked and checked.count(checked[0]) == len(checked):
        distinct: Iterable[object] = checked[:1]
    elif set(map(type, checked)) <= {str}:
        distinct = dict.fromkeys(checked)
    else:
        distinct = checked
    for name in distinct:
        validate_name(name)
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"LISTEN_PID must be a positive process ID, not {pid!r}")

    return {
        LISTEN_FDS: str(len(checked)),
        LISTEN_PID: str(pid),
        LISTEN_FDNAMES: ":".join(checked),
    }


def apply(environ: MutableMapping[str, str], names: Iterable[str], pid: int) -> None:
    """Replace the LISTEN_* variables in environ with those for names and pid."""
    update = encode(names, pid)

    clear(environ)
    environ.update(update)


def clear(environ: MutableMapping[str, str]) -> None:
    """Remove every LISTEN_* variable from environ.

    On os.environ this also calls unsetenv(), so the C environment and any
    child process lose them too.
    """
    for variable in VARIABLES:
        environ.pop(variable, None)


def _parse_count(variable: str, text: str, maximum: int) -> int:
    # systemd's safe_atoi() accepts only a plain decimal; so does this.
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{variable}={text!r} is not a non-negative decimal integer")

    # Compare lengths first: int() rejects a string of more than 4300 digits
    # (sys.get_int_max_str_digits()) with a message that names no variable.
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} digits)"
        raise ValueError(f"{variable}={shown} is larger than {maximum}")

    return int(digits)


def decode(environ: Mapping[str, str], pid: int) -> ListenEnv:
    """Decode the LISTEN_* variables in environ for the process pid.

    Returns an empty ListenEnv when LISTEN_PID or LISTEN_FDS is missing or
    LISTEN_PID names another process, as sd_listen_fds() returns 0 then.

    Raises:
        ValueError: a variable is malformed: a count or PID that is not a
            non-negative decimal, a count above MAX_FDS, or a LISTEN_FDNAMES
            whose number of names differs from LISTEN_FDS. The message names the
            variable and its value.
    """
    pid_text = environ.get(LISTEN_PID)
    count_text = environ.get(LISTEN_FDS)
    if pid_text is None or count_text is None:
        return ListenEnv((), ())

    listen_pid = _parse_count(LISTEN_PID, pid_text, 2**63 - 1)
    if listen_pid != pid:
        return ListenEnv((), ())

    count = _parse_count(LISTEN_FDS, count_text, MAX_FDS)
    if count == 0:
        return ListenEnv((), ())

    names_text = environ.get(LISTEN_FDNAMES)
    if names_text is None:
        names = [DEFAULT_NAME] * count
    else:
        names = names_text.split(":")
        if len(names) != count:
            raise ValueError(
                f"{LISTEN_FDNAMES} has {len(names)} names but {LISTEN_FDS}={count}; "
                "the service manager must send one name per fd"
            )

    fds = tuple(range(FIRST_FD, FIRST_FD + count))
    return ListenEnv(fds, tuple(names))


def decode_current_process() -> ListenEnv:
    """Decode os.environ for this process."""
    return decode(os.environ, os.getpid())
