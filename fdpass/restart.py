"""Restart in place: reexec(), inherit(), listen() and the registry of listeners.

reexec() replaces the running program with a fresh run of itself in the same
process. The fds it passes arrive on 3, 4, ... with the systemd
socket-activation variables set, and inherit() in the new run turns them back
into socket and file objects.
"""

from __future__ import annotations

import _thread
import errno as errno_module
import fcntl
import io
import os
import socket
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence

from fdpass import _log, _native, _socket_env, command, protocol, rebuild
from fdpass import state as state_module

# typing and logging cost milliseconds to import, which every restart would
# pay, so neither is imported at run time. mypy reads this name as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import IO, NoReturn, Protocol, TypeGuard

    from fdpass.addresses import Address, Target

    class HasFileno(Protocol):
        def fileno(self) -> int: ...

    #: Anything reexec() accepts as one fd: an int, a socket, a file object, or
    #: any object with fileno().
    FdLike = int | HasFileno


class Inherited(Mapping[str, "rebuild.FdObject"]):
    """The fds passed to this process, in fd order, keyed by their names.

    ``result[name]`` returns the first fd with that name and
    ``result.getall(name)`` all of them, in fd order. Iteration yields each
    distinct name once. ``descriptions`` lists the kind of each fd.
    """

    def __init__(
        self,
        names: Sequence[str],
        objects: Sequence[rebuild.FdObject],
        describe: Callable[[], tuple[rebuild.Description, ...]],
    ) -> None:
        """Store objects[i] under names[i]. describe() returns the descriptions on first use."""
        self._names = tuple(names)
        self._objects = tuple(objects)
        self._describe = describe
        self._descriptions: tuple[rebuild.Description, ...] | None = None
        self._by_name: dict[str, list[rebuild.FdObject]] = {}
        if self._names and self._names.count(self._names[0]) == len(self._names):
            self._by_name[self._names[0]] = list(self._objects)
        else:
            for name, obj in zip(self._names, self._objects, strict=True):
                self._by_name.setdefault(name, []).append(obj)

    def __getitem__(self, name: str) -> rebuild.FdObject:
        return self._by_name[name][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        shown = ", ".join(f"{d.name!r}: fd {d.fd} ({d.kind})" for d in self.descriptions)
        return f"<fdpass.Inherited {{{shown}}}>"

    def getall(self, name: str) -> list[rebuild.FdObject]:
        """Return every fd passed under name, in fd order; [] if there is none."""
        return list(self._by_name.get(name, ()))

    @property
    def objects(self) -> tuple[rebuild.FdObject, ...]:
        """Every rebuilt object, in fd order."""
        return self._objects

    @property
    def descriptions(self) -> tuple[rebuild.Description, ...]:
        """The fd number, name and kind of every passed fd, in fd order."""
        # Built on first use: with thousands of fds, building them in
        # inherit() would add microseconds per fd to every restart.
        if self._descriptions is None:
            self._descriptions = self._describe()
        return self._descriptions


_lock = _thread.RLock()
_inherited: Inherited | None = None
_inherit_error: ValueError | None = None
# Sockets returned by listen(): the socket, the name reexec() passes it under,
# and whether a listen() call gave that name explicitly.
_listeners: list[tuple[socket.socket, str, bool]] = []


def inherit() -> Inherited:
    """Adopt the fds passed through LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES.

    The first call reads the variables the way sd_listen_fds(3) does: nothing
    is adopted unless LISTEN_PID equals os.getpid(). Each declared fd must be
    open and have FD_CLOEXEC clear. An fd with FD_CLOEXEC set was opened by
    this process after exec, so it was not passed. Adopted fds get FD_CLOEXEC
    set, and the LISTEN_* variables are removed from os.environ and the C
    environment so child processes adopt nothing. Later calls return the same
    object.

    A socket passed by reexec() or upgrade() comes back with the timeout it
    had there, which FDPASS_SOCKETS carries. Any other socket comes back
    with timeout 0.0 if its fd has O_NONBLOCK, and None otherwise.

    Returns:
        An Inherited mapping from name to socket.socket or file object.

    Raises:
        ValueError: the LISTEN_* variables are malformed or declare an fd that
            was not passed. Nothing is adopted, and later calls raise the same
            error.
    """
    global _inherited, _inherit_error

    with _lock:
        if _inherited is not None:
            return _inherited
        if _inherit_error is not None:
            raise _inherit_error

        try:
            listen_env = protocol.decode_current_process()
            result = _adopt(listen_env)
        except ValueError as error:
            _inherit_error = error
            _log.warning("adopted no fds: %s", error)
            raise
        finally:
            protocol.clear(os.environ)
            os.environ.pop(_socket_env.VARIABLE, None)

        # The own fds are chosen before _inherited is set, so that a signal
        # handler's reexec() that finds the cached result also finds the pipes.
        _own_fds.update(_find_own_fds(result))
        _inherited = result
        # NOTE: fdpass's own state memfd and parent pipe, when the program
        # never reads or closes them, are closed by the interpreter's final
        # collection, with a ResourceWarning under -X dev. An atexit hook
        # would run before the hooks that the program registered earlier,
        # and could close an fd number that the program has reused.
        return result


_inherited_state: bytes | None = None
# fdpass's own fds among the inherited ones, by name. See _find_own_fds().
_own_fds: dict[str, IO[bytes]] = {}


def _find_own_fds(inherited: Inherited) -> dict[str, IO[bytes]]:
    """Return the first inherited fd under each of _OWN_FD_NAMES that can be fdpass's own.

    A service manager's FileDescriptorName= can give those names to any fd.
    Under "fdpass-state", only a readable memfd with every seal that
    create_state_fd() adds counts. Under "fdpass-ready" only a pipe's write
    end counts, and under "fdpass-parent" only a pipe's read end. Every
    other fd under the names stays with the program, with a warning, and
    reexec(inherit()) passes it on as "unknown".
    """
    own: dict[str, IO[bytes]] = {}
    for name in sorted(_OWN_FD_NAMES):
        for item in inherited.getall(name):
            if name not in own and not isinstance(item, (int, socket.socket)):
                if name == state_module.STATE_FD_NAME:
                    is_own = state_module.is_state_fd(item.fileno())
                else:
                    # NOTE: a pipe that a service manager named so is taken
                    # as an upgrade's pipe. FDPASS_PARENT_PID could tell
                    # them apart, but a program that cleans its environment
                    # before inherit() would then lose a real upgrade's pipes.
                    fd = item.fileno()
                    access_mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
                    expected_mode = os.O_WRONLY if name == _READY_PIPE_NAME else os.O_RDONLY
                    is_own = stat.S_ISFIFO(os.fstat(fd).st_mode) and access_mode == expected_mode
                if is_own:
                    own[name] = item
                    continue
            _log.warning(
                "inherited fd %d named %r is not one that fdpass passes under that name, so fdpass leaves it "
                "to the program, and reexec(fdpass.inherit()) passes it on as %r",
                item if isinstance(item, int) else item.fileno(),
                name,
                protocol.DEFAULT_NAME,
            )
    return own


def own_fd(name: str) -> IO[bytes] | None:
    """Return the inherited fd under name that fdpass takes as its own (see _find_own_fds()), or None."""
    inherit()
    return _own_fds.get(name)


def inherited_state() -> bytes | None:
    """Return the bytes the previous run passed as reexec(state=...) or upgrade(state=...).

    The state arrives as the inherited fd named "fdpass-state". The first
    call reads it and closes the fd. Later calls return the same bytes.

    Returns:
        The state, or None if the previous run passed none. An fd of that
        name that is not a sealed memfd, such as a pipe that a service
        manager named so, is not read and stays open, so it also gives None.

    Raises:
        ValueError: as inherit() does, when the LISTEN_* variables are
            malformed. Or the program closed the memfd's file object from
            inherit() before this call read it.
    """
    global _inherited_state

    carrier = own_fd(state_module.STATE_FD_NAME)
    with _lock:
        if _inherited_state is None and carrier is not None:
            if carrier.closed:
                raise ValueError(
                    "inherited_state() cannot read the state: the program closed the file object of the "
                    f"{state_module.STATE_FD_NAME!r} memfd from fdpass.inherit() before reading it"
                )
            fd = carrier.fileno()
            _inherited_state = state_module.read_state_fd(fd)
            carrier.close()
            _log.debug("read %d bytes of inherited state", len(_inherited_state))
        return _inherited_state


def _check_adoptable(columns: dict[str, list[int]], names: Sequence[str]) -> None:
    """Raise ValueError for the first fd that is not open or has FD_CLOEXEC set."""
    count = len(names)
    # F_GETFD reports no flag other than FD_CLOEXEC, so these two C-level
    # scans find every bad fd without Python code per fd.
    if not any(columns["error"]) and fcntl.FD_CLOEXEC not in columns["fd_flags"]:
        return

    for fd, error, fd_flags, name in zip(columns["fd"], columns["error"], columns["fd_flags"], names, strict=True):
        if error:
            raise ValueError(
                f"LISTEN_FDS={count} declares fd {fd} (name {name!r}), but fd {fd} "
                f"is not usable: {os.strerror(error)}. The process that started this one "
                "passed fewer fds than it declared."
            )
        if fd_flags & fcntl.FD_CLOEXEC:
            raise ValueError(
                f"LISTEN_FDS={count} declares fd {fd} (name {name!r}), but fd {fd} has "
                "FD_CLOEXEC set, so this process opened it after exec and it was not passed. "
                "The process that started this one passed fewer fds than it declared."
            )


def _set_cloexec(fds: Sequence[int]) -> None:
    # protocol.decode() returns consecutive fds, so one close_range() call
    # can set FD_CLOEXEC on all of them.
    if fds and tuple(fds) == tuple(range(fds[0], fds[0] + len(fds))):
        _native.set_cloexec_range(fds[0], len(fds))
    else:
        _native.set_cloexec(fds, True)


def _adopt_described_sockets(
    fds: Sequence[int], names: Sequence[str], specs: tuple[list[int], list[int], list[int], list[float | None]]
) -> tuple[list[rebuild.FdObject], Callable[[], tuple[rebuild.Description, ...]]] | None:
    """Adopt sockets whose family, type, protocol and timeout FDPASS_SOCKETS gives; None if that does not match.

    fds is protocol.decode()'s 3, 4, ..., never empty here. The kernel is
    asked only for the fd flags of each fd, and the socket constructor for its
    family. None means an fd is closed, has FD_CLOEXEC set, is not a socket or
    has another family, and nothing was adopted.
    """
    families, types, protocols, timeouts = specs

    # The full inspection in _adopt() raises the error that names the bad fd.
    if not _native.all_adoptable_range(fds[0], len(fds)):
        return None
    try:
        sockets = rebuild.rebuild_sockets(fds, families, types, protocols, timeouts)
    except (OSError, ValueError) as error:
        _log.debug("%s does not match the passed fds (%s); asking the kernel", _socket_env.VARIABLE, error)
        return None
    _set_cloexec(fds)

    def describe() -> tuple[rebuild.Description, ...]:
        # SO_ACCEPTCONN is read now, from the sockets that are still open.
        live = _native.inspect_columns([sock.fileno() for sock in sockets])
        listening = [flag if not error else 0 for flag, error in zip(live["listening"], live["error"], strict=True)]
        described = {
            "fd": list(fds), "mode": [stat.S_IFSOCK] * len(fds), "family": families, "type": types,
            "protocol": protocols, "listening": listening,
        }
        return rebuild.describe_columns(described, names)

    return list(sockets), describe


def _adopt(listen_env: protocol.ListenEnv) -> Inherited:
    fds, names = listen_env.fds, listen_env.names
    specs = _socket_env.decode(os.environ, os.getpid(), _parent_generation_pid(), len(fds))
    adopted = None
    # Only sockets take the fast path, so one fd that FDPASS_SOCKETS does not
    # describe (family -1) sends every fd through the kernel inspection.
    if specs is not None and -1 not in specs[0]:
        adopted = _adopt_described_sockets(fds, names, specs)

    if adopted is not None:
        objects, describe = adopted
    else:
        columns = _native.inspect_columns(fds)
        _check_adoptable(columns, names)
        _set_cloexec(fds)
        objects = rebuild.rebuild_columns(columns)
        if specs is not None:
            families, types, _, timeouts = specs
            rebuild.restore_timeouts(objects, columns, families, types, timeouts)

        def describe() -> tuple[rebuild.Description, ...]:
            return rebuild.describe_columns(columns, names)

    if objects and _log.enabled(_log.INFO):
        _log.info("adopted %d fds: %s", len(objects), ", ".join(f"{d.fd}={d.name!r} ({d.kind})" for d in describe()))
    return Inherited(names, objects, describe)


def listen(
    address: Address,
    *,
    type: int = socket.SOCK_STREAM,
    backlog: int | None = None,
    name: str | None = None,
) -> socket.socket:
    """Return a socket bound to address: an inherited one if there is one, or a new one.

    Args:
        address: ``(host, port)`` for TCP or UDP over IPv4 or IPv6, a filesystem
            path for a Unix socket, or a str or bytes starting with NUL for a
            Linux abstract Unix socket. Port 0 requests any free port; see below.
        type: socket.SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
        backlog: the listen() backlog of a new stream or seqpacket socket;
            None means socket.SOMAXCONN.
        name: the name reexec() passes the socket under; None keeps an
            inherited or registered socket's name and names a new one
            "unknown". A name given for a registered socket replaces its name.

    The socket is registered, so reexec() with no fds passes it on.

    With port 0, listen() returns a socket that an earlier call returned only
    if that call gave the same name explicitly, so
    ``listen(("127.0.0.1", 0), name="admin")`` twice returns one socket, and
    two port-0 calls without a name return two. Otherwise it takes an
    inherited socket on any port of that host that no earlier call returned:
    with a name, only one inherited under that name, and without one, one
    inherited as "unknown" before any other. That is how a restarted program
    gets its port-0 sockets back. If none fits, it binds a new socket on a
    free port.

    Raises:
        TypeError, ValueError: address, type, backlog or name is malformed,
            or name starts with "fdpass-", which fdpass reserves for its own fds.
        OSError: the socket cannot be created or bound; the message names the
            address.
    """
    # Imported here, so that a program that never calls listen() does not load it.
    from fdpass.addresses import bind_new_socket, matches_bound_address, resolve

    target = resolve(address, type)
    if backlog is not None and (
        isinstance(backlog, bool) or not isinstance(backlog, int) or not 0 <= backlog <= _INT_MAX
    ):
        raise ValueError(f"backlog must be an int from 0 to {_INT_MAX}, or None, not {backlog!r}")
    if name is not None:
        protocol.validate_name(name)
        check_not_reserved([name])

    inherited = inherit()

    with _lock:
        _prune_closed_listeners()
        registered = _find_registered(target, name)
        if registered is not None:
            return registered

        for description, obj in _unclaimed_inherited(inherited, target, name):
            if matches_bound_address(obj, target, description.listening):
                # A socket that a service manager passed under a name that
                # fdpass reserves is registered as "unknown", so that
                # reexec() can pass it on.
                inherited_name = description.name
                if inherited_name.startswith(RESERVED_NAME_PREFIX):
                    inherited_name = protocol.DEFAULT_NAME
                _listeners.append((obj, name or inherited_name, name is not None))
                _log.debug("listen(%r) reuses inherited fd %d", address, description.fd)
                return obj

        try:
            sock = bind_new_socket(target, backlog)
        except OSError as error:
            holder = _holder_of_port(target, inherited) if error.errno == errno_module.EADDRINUSE else None
            if holder is None:
                raise
            raise AddressInUseByThisProcessError(
                error.errno,
                f"cannot bind to {target.original!r}: address already in use by this process's {holder}; "
                "call listen() with that address to use the socket, or close it first",
            ) from None
        _listeners.append((sock, name or protocol.DEFAULT_NAME, name is not None))
        _log.debug("listen(%r) bound new fd %d", address, sock.fileno())
        return sock


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


class AddressInUseByThisProcessError(OSError):
    """EADDRINUSE from listen() because a socket of this process, inherited or bound earlier, has the port."""


def _holder_of_port(target: Target, inherited: Inherited) -> str | None:
    """Describe this process's socket whose address overlaps target's, or return None.

    Two addresses of one family, type and port overlap when they are equal or
    either host is the wildcard (0.0.0.0 or ::).
    """
    if target.family not in (socket.AF_INET, socket.AF_INET6) or target.any_port:
        return None

    host, port = target.sockaddr[0], target.sockaddr[1]
    owned = [
        (f"inherited fd {description.fd} named {description.name!r}", obj)
        for description, obj in zip(inherited.descriptions, inherited.objects, strict=True)
    ]
    owned += [(f"fd {sock.fileno()} from an earlier listen()", sock) for sock, _, _ in _listeners]
    for label, obj in owned:
        if not isinstance(obj, socket.socket) or obj.fileno() == -1:
            continue
        if obj.family != target.family or obj.type != target.type:
            continue
        try:
            bound = obj.getsockname()
        except OSError:
            continue
        if bound[1] == port and (bound[0] == host or bound[0] in _WILDCARD_HOSTS or host in _WILDCARD_HOSTS):
            return f"{label}, bound to {bound[:2]!r}"
    return None


def _find_registered(target: Target, name: str | None) -> socket.socket | None:
    """Return the socket an earlier listen() call returned for target and name, or None.

    A port-0 target matches only a socket registered under the same explicit
    name, because each port-0 call without one requests its own socket.
    """
    from fdpass.addresses import matches_bound_address

    for index, (sock, registered_name, name_given) in enumerate(_listeners):
        if target.any_port and (name is None or not name_given or name != registered_name):
            continue
        if not matches_bound_address(sock, target, listening=None):
            continue

        # An explicit name renames the registered socket, so reexec() passes it under the latest one.
        if name is not None and (name != registered_name or not name_given):
            _listeners[index] = (sock, name, True)
        return sock
    return None


def _unclaimed_inherited(
    inherited: Inherited, target: Target, name: str | None
) -> list[tuple[rebuild.Description, socket.socket]]:
    """Return the inherited sockets that no listen() call returned, in the order listen() tries them.

    For a port-0 target with a name, only sockets inherited under that name
    qualify. Without a name, sockets inherited as "unknown" come first: a
    port-0 call without a name registered its socket under that name, so the
    same call after a restart gets that socket back before a named one.
    """
    claimed = {id(sock) for sock, _, _ in _listeners}
    candidates = [
        (description, obj)
        for description, obj in zip(inherited.descriptions, inherited.objects, strict=True)
        if isinstance(obj, socket.socket) and id(obj) not in claimed
    ]
    if not target.any_port:
        return candidates
    if name is not None:
        return [(description, obj) for description, obj in candidates if description.name == name]
    return sorted(candidates, key=lambda candidate: candidate[0].name != protocol.DEFAULT_NAME)


def _prune_closed_listeners() -> None:
    _listeners[:] = [entry for entry in _listeners if entry[0].fileno() != -1]


def listeners() -> list[tuple[str, socket.socket]]:
    """Return (name, socket) for every open socket that listen() returned."""
    with _lock:
        _prune_closed_listeners()
        return [(name, sock) for sock, name, _ in _listeners]


def _describe_item(fds: object, key: object, item: object) -> str:
    if isinstance(fds, Mapping):
        return f"fd {key!r} ({item!r})"
    return f"fds[{key}] ({item!r})"


def _item_labels(fds: Sequence[FdLike] | Mapping[str, FdLike]) -> Callable[[int], str]:
    """Return a function from an index into fds to the label errors use for that item.

    Labels are built only for an error: repr() of a socket calls getsockname()
    and getpeername(), which would cost two system calls per passed fd.
    """

    def label(index: int) -> str:
        if isinstance(fds, Mapping):
            key, item = list(fds.items())[index]
            return _describe_item(fds, key, item)
        return _describe_item(fds, index, list(fds)[index])

    return label


_INT_MAX = 2**31 - 1

#: fdpass passes its own fds under names that start with this: the state
#: memfd, an upgrade's pipes and a standby's control socket.
RESERVED_NAME_PREFIX = "fdpass-"


# fdpass.upgrade's READY_FD_NAME and PARENT_FD_NAME, spelled out because that module imports this one.
_READY_PIPE_NAME = "fdpass-ready"
_PARENT_PIPE_NAME = "fdpass-parent"
_UPGRADE_PIPE_NAMES = (_READY_PIPE_NAME, _PARENT_PIPE_NAME)

# The names of the fds that fdpass itself passes: the state memfd and an
# upgrade's readiness and parent pipes.
_OWN_FD_NAMES = frozenset({state_module.STATE_FD_NAME, *_UPGRADE_PIPE_NAMES})


def check_not_reserved(names: Sequence[str]) -> None:
    """Raise ValueError if a name starts with RESERVED_NAME_PREFIX."""
    # Thousands of fds usually share one name, which list.count() finds in C.
    distinct = names[:1] if names and names.count(names[0]) == len(names) else set(names)
    for name in distinct:
        if name.startswith(RESERVED_NAME_PREFIX):
            raise ValueError(
                f"the fd name {name!r} starts with {RESERVED_NAME_PREFIX!r}, which fdpass reserves for "
                "its own fds (state, upgrade pipes, standby); pick another name"
            )


def _fd_number(item: object, label: str) -> int:
    """Return the fd of item; label names item in the error for a bad one."""
    if isinstance(item, bool):
        raise TypeError(f"{label}: expected an fd as int, socket, file object or object with fileno(), not bool")
    if isinstance(item, int):
        fd = item
    elif hasattr(item, "fileno"):
        try:
            fd = item.fileno()
        except (OSError, ValueError) as error:
            raise ValueError(f"{label} has no usable fd: {error}") from None
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"{label}: fileno() returned {fd!r}, expected an int")
    else:
        raise TypeError(
            f"{label}: expected an fd as int, socket, file object or object with fileno(), "
            f"not {type(item).__name__}"
        )

    # The C core takes fds as C int, and no open fd is larger.
    if fd < 0 or fd > _INT_MAX:
        raise ValueError(f"{label} is closed or invalid (fd {fd}); pass an open fd")
    return fd


def _fd_numbers(items: Sequence[object], item_types: set[type], label: Callable[[int], str]) -> list[int]:
    """Return the fd of every item, checked like _fd_number(); item_types is set(map(type, items))."""
    # Sockets and ints, the common cases, skip the per-item checks. Any other
    # type, or a closed or out-of-range fd, sends the list through
    # _fd_number(), which raises with the item's label.
    if item_types == {socket.socket}:
        numbers = list(map(socket.socket.fileno, items))  # type: ignore[arg-type]
        # fileno() of a socket is a C int, or -1 once it is closed.
        if not numbers or min(numbers) >= 0:
            return numbers
    elif item_types == {int}:
        numbers = list(items)  # type: ignore[arg-type]
        if not numbers or (min(numbers) >= 0 and max(numbers) <= _INT_MAX):
            return numbers

    return [_fd_number(item, label(index)) for index, item in enumerate(items)]


def _check_unique(numbers: list[int], label: Callable[[int], str]) -> None:
    if len(set(numbers)) == len(numbers):
        return

    first_index: dict[int, int] = {}
    for index, fd in enumerate(numbers):
        if fd in first_index:
            raise ValueError(
                f"{label(index)} is fd {fd}, which {label(first_index[fd])} already passes; pass each fd once"
            )
        first_index[fd] = index


class _Resolved:
    """The fds given to reexec() or upgrade(), with their numbers, names and item types."""

    __slots__ = ("item_types", "items", "label", "names", "numbers")

    def __init__(
        self, items: list[object], item_types: set[type], numbers: list[int], names: list[str],
        label: Callable[[int], str],
    ) -> None:
        self.items = items
        # set(map(type, items)), kept because each later pass over thousands
        # of items would cost as much again.
        self.item_types = item_types
        self.numbers = numbers
        self.names = names
        self.label = label


# A restart runs its checks in a process that has never run them, and the
# first isinstance() of a type against an ABC costs about 10 us, so the
# builtin containers are tested by exact type first.
_BUILTIN_CONTAINERS = (list, tuple, dict)


def _is_mapping(fds: object) -> TypeGuard[Mapping[str, FdLike]]:
    kind = type(fds)
    if kind in _BUILTIN_CONTAINERS:
        return kind is dict
    return isinstance(fds, Mapping)


def _is_empty_collection(fds: object) -> bool:
    if type(fds) in _BUILTIN_CONTAINERS:
        return not fds
    return isinstance(fds, (Mapping, Sequence)) and len(fds) == 0


def _resolve_fds(fds: Sequence[FdLike] | Mapping[str, FdLike], *, check_repeats: bool = True) -> _Resolved:
    """Return the items of fds with their fd numbers, names and error labels, with types and names checked.

    With check_repeats, an fd given twice raises ValueError. reexec() leaves
    that to fdpass_exec(), which rejects a repeated fd before it changes
    anything.
    """
    if isinstance(fds, Inherited):
        return _resolve_inherited(fds)
    if _is_mapping(fds):
        label = _item_labels(fds)
        names = list(fds.keys())
        for index, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"{label(index)}: the name must be a str, not {type(name).__name__}")
            protocol.validate_name(name)
        items: list[object] = list(fds.values())
    elif isinstance(fds, (str, bytes)) or not isinstance(fds, (list, tuple, set, frozenset, Sequence)):
        raise TypeError(f"fds must be a sequence of fds or a mapping from name to fd, not {type(fds).__name__}")
    else:
        label = _item_labels(fds)
        items = list(fds)
        names = [protocol.DEFAULT_NAME] * len(items)

    item_types = set(map(type, items))
    numbers = _fd_numbers(items, item_types, label)
    if check_repeats:
        _check_unique(numbers, label)

    return _Resolved(items, item_types, numbers, names, label)


def _resolve_inherited(inherited: Inherited) -> _Resolved:
    """Return every fd of inherited, several under one name included, except fdpass's own.

    Mapping access would give one fd per name. fdpass's own fds, as
    _find_own_fds() chose them, are left out: reexec() passes the pipes
    itself while they are due, and state=... makes a new memfd. Any other fd
    under a reserved name came from a service manager's
    FileDescriptorName=, and goes on as "unknown", as `fdpass run` passes it.
    """
    names: list[str] = []
    items: list[object] = []
    for name, item in zip(inherited._names, inherited.objects, strict=True):
        if not name.startswith(RESERVED_NAME_PREFIX):
            names.append(name)
        elif item is _own_fds.get(name):
            continue
        else:
            names.append(protocol.DEFAULT_NAME)
        items.append(item)

    def label(index: int) -> str:
        return f"inherited fd {names[index]!r} ({items[index]!r})"

    item_types = set(map(type, items))
    return _Resolved(items, item_types, _fd_numbers(items, item_types, label), names, label)


def flush_output() -> None:
    """Flush sys.stdout, sys.stderr and every logging handler, so exec loses no output."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as error:
            # A closed or broken stream loses its buffered output; exec goes on.
            _log.debug("cannot flush %r before exec: %s", stream, error)

    # A program that never imported logging has no handlers to flush.
    logging = sys.modules.get("logging")
    if logging is None:
        return
    manager_loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in manager_loggers:
        for handler in logger.handlers:
            try:
                handler.flush()
            except (OSError, ValueError) as error:
                _log.debug("cannot flush logging handler %r before exec: %s", handler, error)


def _flush_passed(items: Sequence[object], item_types: set[type], label: Callable[[int], str]) -> None:
    # A file object's write buffer lives in this process's memory, which
    # execve discards, so flush it while the fd can still take the bytes.
    if item_types <= {int, socket.socket}:
        return
    for index, item in enumerate(items):
        if isinstance(item, (int, socket.socket)):
            continue
        flush = getattr(item, "flush", None)
        if not callable(flush):
            continue
        try:
            flush()
        except (OSError, ValueError) as error:
            _log.warning("cannot flush %s before the restart, so its buffered data is lost: %s", label(index), error)


def _is_buffered_reader(item: object) -> bool:
    # A raw FileIO or SocketIO reads nothing ahead; io's buffered and text layers do.
    if not isinstance(item, (io.BufferedIOBase, io.TextIOBase)):
        return False
    try:
        return bool(item.readable())
    except ValueError:
        return False  # a closed file, which _fd_numbers() has rejected already


def _read_positions(
    items: Sequence[object], item_types: set[type], label: Callable[[int], str]
) -> list[tuple[int, int]]:
    """Return (fd, position) for each passed buffered reader: the fd offset at which its unread data starts.

    A buffered reader's fd offset lies past the bytes it has read ahead, and
    the new run reads from the fd, so reexec() moves the offset back.

    Raises:
        ValueError: a buffered reader is on an fd that cannot seek, such as
            a socket's makefile(), so its read-ahead cannot be put back. Or
            a text reader's position is not a plain byte offset.
    """
    if item_types <= {int, socket.socket}:
        return []

    positions = []
    for index, item in enumerate(items):
        if not _is_buffered_reader(item):
            continue
        reader: io.IOBase = item  # type: ignore[assignment]
        if not reader.seekable():
            raise ValueError(
                f"{label(index)} is a buffered reader on an fd that cannot seek, so the bytes it has read "
                "ahead would not reach the new run; pass the socket or its fileno() and read from that instead"
            )
        try:
            position = reader.tell()
        except OSError as error:
            raise ValueError(
                f"{label(index)} cannot report its read position ({error}); call reexec() outside a "
                "for loop over it, or read it with readline()"
            ) from error
        # TextIOWrapper.tell() packs decoder state above the low 64 bits.
        if not 0 <= position < 2**63:
            raise ValueError(
                f"{label(index)} stopped inside a multibyte character or a decoder state, so no fd offset "
                "matches its position; read to the end of a line before the restart"
            )
        positions.append((reader.fileno(), position))
    return positions


def _move_fd_offsets(positions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Set each fd's offset to its position; return (fd, previous offset) for every fd moved."""
    moved = []
    for fd, position in positions:
        previous = os.lseek(fd, 0, os.SEEK_CUR)
        if previous != position:
            os.lseek(fd, position, os.SEEK_SET)
            moved.append((fd, previous))
    return moved


def _restore_fd_offsets(moved: Sequence[tuple[int, int]]) -> None:
    # The reader objects stay as they were, so their fds must point past the read-ahead again.
    for fd, previous in reversed(moved):
        os.lseek(fd, previous, os.SEEK_SET)


def _encode_environment(env: Mapping[str, str]) -> list[bytes]:
    # What os.fsencode() does, without its Python-level call per variable.
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    encoded = []
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env must map str to str, but contains {key!r}: {value!r}")
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env contains the variable name {key!r}; a name must be non-empty, without '=' or NUL")
        if "\0" in value:
            raise ValueError(f"env variable {key!r} has the value {value!r}, which contains NUL; execve cannot pass it")
        encoded.append(f"{key}={value}".encode(encoding, errors))
    return encoded


def _environment_block(
    env: Mapping[str, str] | None, updates: Mapping[str, str], removed: Sequence[str]
) -> list[bytes]:
    """Return the "NAME=value" entries of env (None: os.environ) without removed, with updates applied."""
    if env is not None:
        environ = dict(env)
        for name in removed:
            environ.pop(name, None)
        environ.update(updates)
        return _encode_environment(environ)

    # os.environ keeps its variables encoded, in the _data dict it shares
    # with os.environb on POSIX, and putenv() has refused NUL and "=" in
    # their names. Copying that dict takes about 1 us; the mapping interface
    # decodes each variable and takes about 30 us in a restart's cold process.
    data = getattr(os.environ, "_data", None)
    if data is not getattr(os.environb, "_data", None) or not isinstance(data, dict):
        # os.environ was replaced, for example by mock.patch("os.environ", new=...),
        # so it is the mapping to copy.
        return _environment_block(dict(os.environ), updates, removed)
    block: dict[bytes, bytes] = data.copy()
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    for name in removed:
        block.pop(name.encode(encoding, errors), None)
    for entry in _encode_environment(updates):
        key, _, value = entry.partition(b"=")
        block[key] = value
    return [key + b"=" + value for key, value in block.items()]


def _encode_executable(executable: object) -> bytes:
    if not isinstance(executable, (str, bytes, os.PathLike)):
        raise TypeError(
            f"executable must be a path as str, bytes or os.PathLike, not {type(executable).__name__}: {executable!r}"
        )

    path = os.fsencode(executable)
    if not path or b"\0" in path:
        raise ValueError(f"executable {executable!r} must be a non-empty path without NUL")
    return path


def _encode_argv(argv: Sequence[str | bytes]) -> list[bytes]:
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError(f"argv must be a non-empty sequence of str or bytes, not {argv!r}")

    encoded = []
    for index, arg in enumerate(argv):
        if not isinstance(arg, (str, bytes, os.PathLike)):
            raise TypeError(f"argv[{index}] must be str or bytes, not {type(arg).__name__}")
        arg_bytes = os.fsencode(arg)
        if b"\0" in arg_bytes:
            raise ValueError(f"argv[{index}] {arg!r} contains NUL")
        encoded.append(arg_bytes)
    return encoded


def reexec(
    fds: Sequence[FdLike] | Mapping[str, FdLike] = (),
    *,
    argv: Sequence[str | bytes] | None = None,
    executable: str | bytes | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    state: bytes | None = None,
) -> NoReturn:
    """Replace this program with a fresh run of itself, in the same process, passing fds.

    The fds arrive in the new run on 3, 4, ... in order, with LISTEN_FDS,
    LISTEN_PID (this PID, which exec keeps) and LISTEN_FDNAMES set, and
    inherit() there turns them back into objects. Every other fd above 2 is
    closed by the exec. stdout, stderr, the logging handlers and every passed
    object with flush() are flushed first. The fd of each passed buffered
    reader is moved back to the position it has been read to, so the new run
    reads on from there. Never returns on success.

    The new run starts with SIGPIPE and SIGXFSZ at SIG_DFL. Of the signals
    that the calling thread blocks, those without a handler that the main
    thread blocks too stay blocked, and so do pending ones. So a program
    that takes SIGHUP with sigwait() keeps a SIGHUP sent during the restart
    pending, instead of dying of it. The others are unblocked. If
    /proc/self/status cannot be read, the calling thread's mask stands in
    for the main thread's.

    Args:
        fds: a sequence of fds, each named "unknown", or a mapping from name
            to fd. An fd is an int, a socket, a file object or anything with
            fileno(). Empty means every open socket that listen() returned.
            The Inherited from inherit() passes every fd it holds, several
            under one name included, except fdpass's own: the state memfd
            and an upgrade's "fdpass-ready" and "fdpass-parent" pipes, as
            inherit() identified them. Any other fd under an "fdpass-" name
            goes on as "unknown".
        argv: the new argv; None re-runs this program with its original
            interpreter options and arguments (see fdpass.command).
        executable: the file to execute; None means sys.executable when argv
            is None, else argv[0] looked up in PATH.
        env: the new environment; None means os.environ. LISTEN_* variables
            in it are replaced.
        state: bytes for the new run to read with inherited_state(). They
            travel in a sealed memfd passed as one more fd, named
            "fdpass-state", so no environment size limit applies.

    Raises:
        TypeError, ValueError: an fd is closed, invalid or passed twice, a name
            is invalid, or argv or env is malformed. Or a passed buffered
            reader is on an fd that cannot seek (a socket's makefile(), a
            pipe), so what it has read ahead would be lost. Nothing has changed.
        fdpass.UpgradeError: an Upgrader's upgrade() is running in this
            process. Nothing has changed.
        OSError: execve failed (for example ENOENT, EACCES or E2BIG). Every fd,
            fd flag and signal setting is as it was, so the program can go on
            serving. FileNotFoundError before any change, when argv is None
            and the script, directory or zip file that started the program
            is gone.
    """
    resolved = None if _is_empty_collection(fds) else _resolve_fds(fds, check_repeats=False)
    # An Inherited with nothing but fdpass's own fds counts as empty, as one with no fds at all does.
    if resolved is None or (isinstance(fds, Inherited) and not resolved.items):
        defaults = listeners()

        def label(index: int) -> str:
            return f"listener {defaults[index][0]!r} ({defaults[index][1]!r})"

        items: list[object] = [sock for _, sock in defaults]
        resolved = _Resolved(
            items, set(map(type, items)), [sock.fileno() for _, sock in defaults], [name for name, _ in defaults], label
        )
    check_not_reserved(resolved.names)
    upgrade_module = sys.modules.get("fdpass.upgrade")
    if upgrade_module is not None:
        upgrade_module._check_no_upgrade_running()
    upgrade_pipes = _inherited_upgrade_pipes()
    if upgrade_pipes is not None:
        resolved = _with_upgrade_pipes(resolved, *upgrade_pipes)
    items, numbers, names = resolved.items, resolved.numbers, resolved.names
    state_bytes = None if state is None else state_module.to_bytes(state)

    if env is not None and not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping from str to str, not {type(env).__name__}: {env!r}")
    updates: dict[str, str] = {}
    if upgrade_pipes is not None:
        updates.update(_upgrade_variables(upgrade_module, ready_due=_READY_PIPE_NAME in upgrade_pipes[0]))
    exec_cwd = None
    if argv is None:
        start = command.current()
        _check_program_file(start.argv)
        exec_cwd = start.cwd
        if exec_cwd is not None and not os.path.isdir(exec_cwd):
            raise FileNotFoundError(
                errno_module.ENOENT,
                "this -m program started in a directory that is gone, and a new run must start there "
                "to import it; pass argv= to run it another way",
                exec_cwd,
            )
        exec_argv: Sequence[str | bytes] = start.argv
        exec_path: str | bytes | os.PathLike[str] = start.executable if executable is None else executable
    else:
        exec_argv = argv
        if executable is None:
            first = os.fsdecode(argv[0]) if argv and isinstance(argv[0], (str, bytes)) else ""
            import shutil  # only here: it costs milliseconds to import

            exec_path = shutil.which(first) or first
        else:
            exec_path = executable
    if state_bytes is not None:
        names = [*names, state_module.STATE_FD_NAME]
    updates.update(protocol.encode(names, os.getpid()))
    if state_bytes is None:
        socket_spec = _socket_env.encode(items, os.getpid(), resolved.item_types)
    else:
        # The state memfd is not a socket, so it gets a "-" run.
        socket_spec = _socket_env.encode([*items, None], os.getpid(), {*resolved.item_types, type(None)})
    if socket_spec is not None:
        updates[_socket_env.VARIABLE] = socket_spec

    argv_bytes = _encode_argv(exec_argv)
    path_bytes = _encode_executable(exec_path)
    envp_bytes = _environment_block(env, updates, (*protocol.VARIABLES, _socket_env.VARIABLE))

    read_positions = _read_positions(items, resolved.item_types, resolved.label)
    moved_offsets: list[tuple[int, int]] = []
    state_fd = None
    standby_stopped: str | None = None
    try:
        if state_bytes is not None:
            # Above every given fd, so that the memfd cannot take the number of a
            # closed one and hide it from fdpass_exec()'s check.
            state_fd = _create_state_fd_above(state_bytes, max(numbers, default=2))
            numbers = [*numbers, state_fd]
        with _lock:
            if _log.enabled(_log.INFO):
                _log.info(
                    "restarting in place: executing %s with %d fds (%s)",
                    os.fsdecode(path_bytes),
                    len(numbers),
                    ", ".join(f"{fd}={name!r}" for fd, name in zip(numbers, names, strict=True)),
                )
            if upgrade_module is not None:
                standby_stopped = upgrade_module._stop_standby_before_exec()
            _flush_passed(items, resolved.item_types, resolved.label)
            flush_output()
            moved_offsets = _move_fd_offsets(read_positions)
            saved_cwd = _enter_start_directory(exec_cwd)
            try:
                errno, bad_index = _native.exec_with_fds(path_bytes, argv_bytes, envp_bytes, numbers)
            finally:
                _leave_start_directory(saved_cwd)
    finally:
        # Reached only if nothing was executed: a flush or the exec failed.
        _restore_fd_offsets(moved_offsets)
        if state_fd is not None:
            os.close(state_fd)
        if upgrade_module is not None:
            upgrade_module._restart_standby_after_exec_failure(standby_stopped)

    if bad_index >= 0:
        bad_fd = numbers[bad_index]
        if errno == errno_module.EBADF:
            raise OSError(errno, f"{resolved.label(bad_index)} is fd {bad_fd}, which is not open; pass an open fd")
        first_index = numbers.index(bad_fd)
        raise ValueError(
            f"{resolved.label(bad_index)} is fd {bad_fd}, which {resolved.label(first_index)} already passes; "
            "pass each fd once"
        )

    _log.warning(
        "restart failed: execve(%s): %s; the program keeps running", os.fsdecode(path_bytes), os.strerror(errno)
    )
    if errno == errno_module.EMFILE:
        # Each moved fd is copied once above the targets, so a failed exec can restore the slot it overwrote.
        raise OSError(
            errno,
            f"{os.strerror(errno)}: moving {len(numbers)} fds into place needs up to {len(numbers)} free fds "
            "below the RLIMIT_NOFILE soft limit; raise it with resource.setrlimit() or close unused fds",
            os.fsdecode(path_bytes),
        )
    if errno == errno_module.E2BIG:
        raise OSError(errno, f"{os.strerror(errno)}: {_size_report(argv_bytes, envp_bytes)}", os.fsdecode(path_bytes))
    raise OSError(errno, os.strerror(errno), os.fsdecode(path_bytes))


def _size_report(argv: Sequence[bytes], envp: Sequence[bytes]) -> str:
    """Describe what made execve() fail with E2BIG: the totals and the largest variable."""
    # Linux also rejects any one string over MAX_ARG_STRLEN (32 pages).
    largest = max(envp, key=len, default=b"")
    name = os.fsdecode(largest.partition(b"=")[0])
    return (
        f"argv has {sum(map(len, argv))} bytes and the environment {sum(map(len, envp))} bytes in "
        f"{len(envp)} variables; the largest is {name!r} with {len(largest)} bytes"
    )


def _enter_start_directory(path: str | None) -> int | None:
    """Change into path, if given, and return an fd of the directory left, for _leave_start_directory().

    NOTE: other threads see the new working directory until execve, or until
    _leave_start_directory() after a failed one.
    """
    if path is None:
        return None
    saved = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(path)
    except BaseException:
        os.close(saved)
        raise
    return saved


def _leave_start_directory(saved: int | None) -> None:
    if saved is None:
        return
    try:
        os.fchdir(saved)
    finally:
        os.close(saved)


def _inherited_upgrade_pipes() -> tuple[list[str], list[IO[bytes]]] | None:
    """Return the names and objects of the readiness and parent pipes from upgrade() that are still open, or None.

    ready() and stop() close the readiness pipe. While it is open, a new
    generation that calls reexec() passes both pipes on, so that its new
    image is still the generation that the old one waits for. After
    ready(), the parent pipe alone goes on, so the new image still knows
    that the previous generation runs, and upgrade() waits for its exit.
    """
    names: list[str] = []
    pipes: list[IO[bytes]] = []
    for name in _UPGRADE_PIPE_NAMES:
        pipe = own_fd(name)
        if pipe is None or pipe.closed:
            continue
        names.append(name)
        pipes.append(pipe)
    return (names, pipes) if pipes else None


# fdpass.upgrade's PARENT_PID_VARIABLE, READY_DEADLINE_VARIABLE and READY_PIPE_CLOSED_VARIABLE.
_PARENT_PID_VARIABLE = "FDPASS_PARENT_PID"
_READY_DEADLINE_VARIABLE = "FDPASS_READY_DEADLINE_NS"
_READY_PIPE_CLOSED_VARIABLE = "FDPASS_READY_PIPE_CLOSED_IN"


def _upgrade_variables(upgrade_module: ModuleType | None, *, ready_due: bool) -> dict[str, str]:
    """Return the upgrade variables for reexec()'s new image: FDPASS_READY_DEADLINE_NS only while ready() is due.

    An Upgrader takes them out of os.environ, and
    fdpass.upgrade._readiness_variables() gives them back, with the
    variable that records whether ready() or stop() closed the readiness pipe.
    Before any Upgrader, they are still in os.environ, which env= replaces.
    """
    from_upgrader: dict[str, str] = {}
    if upgrade_module is not None:
        from_upgrader = upgrade_module._readiness_variables()

    variables = {}
    for name in (_PARENT_PID_VARIABLE, _READY_DEADLINE_VARIABLE, _READY_PIPE_CLOSED_VARIABLE):
        value = os.environ.get(name)
        if value is not None:
            variables[name] = value
    variables.update(from_upgrader)
    if not ready_due:
        variables.pop(_READY_DEADLINE_VARIABLE, None)
    return variables


def _with_upgrade_pipes(resolved: _Resolved, pipe_names: list[str], pipes: list[IO[bytes]]) -> _Resolved:
    """Return resolved with the Upgrader's readiness and parent pipes appended under their reserved names.

    Raises:
        ValueError: resolved already passes one of the pipes.
    """
    pipe_names_by_fd = {pipe.fileno(): name for name, pipe in zip(pipe_names, pipes, strict=True)}
    for index, number in enumerate(resolved.numbers):
        if number in pipe_names_by_fd:
            raise ValueError(
                f"{resolved.label(index)} is fd {number}, fdpass's {pipe_names_by_fd[number]!r} pipe, which "
                "reexec() passes by itself; leave it out of fds"
            )

    count = len(resolved.items)
    base_label = resolved.label

    def label(index: int) -> str:
        return base_label(index) if index < count else f"fdpass's {pipe_names[index - count]!r} pipe"

    return _Resolved(
        [*resolved.items, *pipes],
        resolved.item_types | set(map(type, pipes)),
        [*resolved.numbers, *(pipe.fileno() for pipe in pipes)],
        [*resolved.names, *pipe_names],
        label,
    )


def _parent_generation_pid() -> int:
    """Return the PID of the Upgrader generation that started this process, or else os.getppid().

    upgrade() writes it in FDPASS_PARENT_PID (fdpass.upgrade.PARENT_PID_VARIABLE),
    which still names that generation after it exited, when os.getppid()
    names a reaper. The first Upgrader moves the value out of os.environ.
    """
    text = os.environ.get("FDPASS_PARENT_PID", "")
    # Linux PIDs have at most 7 digits, and int() raises for over 4300.
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) > 0:
        return int(text)
    cached = getattr(sys.modules.get("fdpass.upgrade"), "_inherited_parent_pid", None)
    if isinstance(cached, int):
        return cached
    return os.getppid()


def _check_program_file(argv: list[str]) -> None:
    """Raise FileNotFoundError if argv runs a script, directory or zip file that no longer exists.

    execve would succeed, and the new interpreter would exit with status 2
    at once, taking every passed socket with it.
    """
    try:
        parsed = command.parse_python_argv(argv)
    except ValueError:
        return  # not a python command line that fdpass can read
    # NOTE: a file removed between this check and execve still ends the process.
    if parsed.kind == "script" and not os.path.exists(parsed.target):
        raise FileNotFoundError(
            errno_module.ENOENT,
            "the program file no longer exists, so a new run would exit at once; "
            "put it back, or pass argv= to run another file",
            parsed.target,
        )


def _create_state_fd_above(state: bytes, lowest: int) -> int:
    """Return a sealed memfd with state, on a number above lowest; raise OSError naming state= on failure."""
    try:
        fd = state_module.create_state_fd(state)
    except OSError as error:
        message = f"cannot create the memfd for state= ({len(state)} bytes): {error.strerror}"
        raise OSError(error.errno, message) from error

    try:
        return _above(fd, lowest)
    except OSError as error:
        import resource  # only here: a restart that works never needs it

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise OSError(
            error.errno,
            f"the memfd for state= needs a free fd above fd {lowest}, the highest one passed, below the "
            f"RLIMIT_NOFILE soft limit of {soft} ({error.strerror}); raise the limit with "
            "resource.setrlimit() or pass fds with lower numbers",
        ) from error


def _above(fd: int, lowest: int) -> int:
    """Move fd to the lowest free number above lowest, with FD_CLOEXEC set, and return the new number."""
    if fd > lowest:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest + 1)
    finally:
        os.close(fd)
