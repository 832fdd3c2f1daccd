"""The standby process: an interpreter started ahead of an upgrade that waits to become the next generation.

Upgrader(prestart=...) starts it with the interpreter options of the program,
through fdpass_spawn(), with one fd: its end of an AF_UNIX SOCK_SEQPACKET
socketpair, passed as LISTEN_FDS=1 under the name STANDBY_FD_NAME. The -c
bootstrap from bootstrap_code() imports this module and calls main(), which:

1. receives the names of the modules to preload and the entry that a cold
   start puts first on sys.path, puts that entry there, and imports them;
2. sends back the path, st_mtime_ns and st_size of every module file it
   has loaded and of every .pth file in its sys.path directories, the
   modules that failed to import, and the fds it has open besides its
   control socket, so the parent can tell whether it is still fresh;
3. if the request asks for it, forks its successor: the standby that the
   generation it becomes will use, already preloaded (see fork_successor());
4. blocks until the parent sends the hand-over: the fds, their names, the
   environment, the working directory and the command line;
5. puts the fds on 3, 4, ..., closes every other fd above 2, takes the
   environment, arms the ready() deadline that it names, takes the directory
   and command line, and runs the program as a fresh start of that command
   line would.

A successor starts at step 1 with a control socket to its parent, and its
parent's Upgrader adopts it in place of starting a new interpreter (see
fdpass.prestart.start()).

EOF, ECONNRESET or EPIPE on the control socket at steps 1 to 4 means the
parent is gone, and the standby exits with status 0. A parent killed before
it read the report makes the standby's next recvmsg() fail with ECONNRESET
instead of reading EOF. The standby ignores SIGINT until the hand-over, so
a Ctrl-C to the process group ends the parent, and through it the standby,
without a KeyboardInterrupt traceback from the standby.

Every message is a series of records, one SOCK_SEQPACKET datagram each: b"D"
and up to RECORD_BYTES bytes of JSON, b"F" with up to MAX_FDS_PER_RECORD fds
in SCM_RIGHTS, and b"E" to end the message.
"""

from __future__ import annotations

import fcntl
import json
import os
import pkgutil
import signal
import socket
import sys
import threading
import time

from fdpass import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The LISTEN_FDNAMES name of the standby's control socket.
STANDBY_FD_NAME = "fdpass-standby"

#: JSON bytes per record, well below the default socket send buffer, so one record always fits.
RECORD_BYTES = 32768

#: The kernel's SCM_MAX_FD: the most fds one SCM_RIGHTS message can carry.
MAX_FDS_PER_RECORD = 253

# A module file modified this many ns before the standby started, or later,
# may have changed while it was imported: the kernel stamps mtime from a
# coarse clock, which lags by a few ms, so one second covers it.
_MTIME_MARGIN_NS = 1_000_000_000

# Modules whose import has visible effects: "this" prints, "antigravity" opens a browser.
_NEVER_PRELOADED = frozenset({"__main__", "this", "antigravity"})


class StandbyProtocolError(Exception):
    """A record on the control socket was truncated, unknown or out of place."""


class Successor:
    """A standby forked by this process before its hand-over, for the Upgrader of the generation it became.

    origin contains what the successor inherited and a fresh standby would
    take from the generation at its start, under the names of
    fdpass.prestart.Standby's attributes. That is the interpreter and its
    options, the start-up variables, executable, stdio, process attributes,
    sys.path entry and working directory, and under "preload" an explicit
    module list. A successor is adopted only if a fresh standby would get
    the same.
    """

    def __init__(self, pid: int, control: socket.socket, origin: dict[str, Any]) -> None:
        self.pid = pid
        self.control = control
        self.origin = origin
        # A child that the generation forks without exec must not adopt or kill it.
        self.owner_pid = os.getpid()


#: The successor that this process forked, until its Upgrader adopts or discards it.
successor: Successor | None = None


def take_successor() -> Successor | None:
    """Return this process's successor, or None, and forget it. The caller adopts or kills it."""
    global successor

    candidate = successor
    if candidate is None or candidate.owner_pid != os.getpid():
        return None
    successor = None
    return candidate


def discard_successor() -> None:
    """Kill and reap this process's successor, if it has one, because no Upgrader will adopt it."""
    candidate = take_successor()
    if candidate is None:
        return
    candidate.control.close()
    try:
        os.kill(candidate.pid, signal.SIGKILL)
        os.waitpid(candidate.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def bootstrap_code(package_dir: str) -> str:
    """Return the -c code that starts a standby with fdpass imported from package_dir.

    The interpreter puts "" (the working directory) first on sys.path for -c
    unless -P or -I is given. The code removes that entry, so that a checkout
    of fdpass in the working directory does not shadow the installed one.
    It appends package_dir, where the parent's fdpass lives, and main()
    removes that entry again.
    """
    return (
        "import sys;"
        "getattr(sys.flags,'safe_path',0) or sys.flags.isolated or sys.path.pop(0);"
        f"sys.path.append({package_dir!r});"
        "import fdpass._standby;"
        "fdpass._standby.main()"
    )


def send_message(sock: socket.socket, payload: object, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send payload as JSON, and fds, as one message of records.

    Raises:
        OSError: the peer is gone (BrokenPipeError) or the send timed out.
    """
    data = json.dumps(payload).encode()

    for start in range(0, len(fds), MAX_FDS_PER_RECORD):
        socket.send_fds(sock, [b"F"], list(fds[start : start + MAX_FDS_PER_RECORD]))
    for start in range(0, len(data), RECORD_BYTES):
        sock.sendall(b"D" + data[start : start + RECORD_BYTES])
    sock.sendall(b"E")


def receive_message(sock: socket.socket) -> tuple[object, list[int]] | None:
    """Receive one message from send_message(); return (payload, fds), or None on EOF.

    The received fds have FD_CLOEXEC set. On an error, they are closed.

    Raises:
        StandbyProtocolError: a record was truncated or unknown, or EOF cut a message short.
        OSError: recvmsg() failed or timed out.
    """
    chunks: list[bytes] = []
    fds: list[int] = []
    try:
        while True:
            record, received, flags, _ = socket.recv_fds(
                sock, RECORD_BYTES + 1, MAX_FDS_PER_RECORD, socket.MSG_CMSG_CLOEXEC
            )
            fds.extend(received)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise StandbyProtocolError(f"a control record was truncated (recvmsg flags {flags:#x})")
            if not record:
                if chunks or fds:
                    raise StandbyProtocolError("the control socket reached EOF in the middle of a message")
                return None
            kind, body = record[:1], record[1:]
            if kind == b"D":
                chunks.append(body)
            elif kind == b"E":
                return json.loads(b"".join(chunks)), fds
            elif kind != b"F":
                raise StandbyProtocolError(f"unknown control record type {kind!r}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def default_preload() -> list[str]:
    """Return the stdlib modules this process has imported, and fdpass's, in the order it imported them.

    The standby must replay that order. Sorted names would put _asyncio
    before asyncio. _asyncio then imports asyncio while it is half
    initialized, and asyncio.tasks keeps its Python current_task(), which
    does not track the C tasks. asyncio.current_task() then returns None,
    and asyncio.timeout() raises "Timeout should be used inside a task".
    """
    stdlib = sys.stdlib_module_names
    return [
        name
        for name in list(sys.modules)
        if name not in _NEVER_PRELOADED and (name.partition(".")[0] in stdlib or name.partition(".")[0] == "fdpass")
    ]


def _preload(names: list[str]) -> list[list[str]]:
    """Import each module; return [name, error] for each that failed."""
    import importlib

    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # module code can raise anything; the parent reports it
            failed.append([name, f"{type(error).__name__}: {error}"])
    return failed


def pth_files(directories: list[str], started_ns: int | None = None) -> list[list[object]]:
    """Return [path, st_mtime_ns, st_size] of every .pth file in directories, sorted.

    The site module reads .pth files only at start-up, so a standby must
    not run after one was added, removed or changed. With started_ns, a file
    modified after started_ns - _MTIME_MARGIN_NS gets st_mtime_ns -1, as in
    _module_files().
    """
    files: list[list[object]] = []
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith(".pth"):
                continue
            try:
                status = entry.stat()
            except OSError:
                continue
            recent = started_ns is not None and status.st_mtime_ns >= started_ns - _MTIME_MARGIN_NS
            files.append([entry.path, -1 if recent else status.st_mtime_ns, status.st_size])
    return sorted(files)


def _module_files(started_ns: int) -> list[list[object]]:
    """Return [path, st_mtime_ns, st_size] for each loaded module's file.

    A file modified after started_ns - _MTIME_MARGIN_NS gets st_mtime_ns -1,
    which matches no file, because the stat() here may have seen a newer
    file than the import read.
    """
    seen = set()
    files: list[list[object]] = []

    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or path in seen:
            continue
        seen.add(path)
        try:
            status = os.stat(path)
        except OSError:
            continue
        recent = status.st_mtime_ns >= started_ns - _MTIME_MARGIN_NS
        files.append([path, -1 if recent else status.st_mtime_ns, status.st_size])
    return files


def open_fds(control_fd: int) -> list[list[object]]:
    """Return [fd, target] for each fd above 2 that this process holds, except control_fd.

    The target is what /proc/self/fd shows, such as /tmp/perf-PID.map for
    the perf map that -X perf keeps open.
    """
    fds: list[list[object]] = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == control_fd:
            continue
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory fd that listdir() used, closed by now
        fds.append([fd, target])
    return sorted(fds)


def _place_fds(fds: list[int], keep: int | None = None) -> None:
    """Put fds on 3, 4, ... with FD_CLOEXEC clear, and close every other fd above 2 but keep.

    Every fd is first copied above the target range, so no move overwrites
    an fd that a later move still needs. keep must lie above that range.
    """
    first = protocol.FIRST_FD
    end = first + len(fds)

    high = []
    for fd in fds:
        high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, end))
        os.close(fd)
    for target, fd in enumerate(high, start=first):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)

    # NOTE: a preloaded module that keeps an fd open loses it here, because
    # a cold start would not have it either.
    # The standby never lowers RLIMIT_NOFILE, so no fd sits above the limit.
    if keep is None:
        os.closerange(end, os.sysconf("SC_OPEN_MAX"))
        return
    os.closerange(end, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _set_environment(environ: dict[str, str]) -> None:
    """Make environ this process's environment, os.environ and the C one, with LISTEN_PID as this PID."""
    for name in list(os.environ):
        if name not in environ:
            del os.environ[name]
    os.environ.update(environ)
    os.environ[protocol.LISTEN_PID] = str(os.getpid())


def main_path_entry(kind: str, target: str, cwd: str | None = None) -> str | None:
    """Return what the interpreter puts first on sys.path to run target, or None under -P or -I.

    kind is a fdpass.command.PythonCommand kind. A -m program gets the
    working directory, cwd if given, and a -c program gets "". A script gets its
    directory, symlinks resolved, and runpy.run_path() puts a directory or
    zip file there itself.
    """
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return None
    if kind == "module":
        return os.getcwd() if cwd is None else cwd
    if kind == "code":
        return ""
    if pkgutil.get_importer(target) is not None:
        return target
    return os.path.dirname(os.path.realpath(target))


def _run_program(argv: list[str], base_path: list[str]) -> None:
    """Run argv's script, module or code the way the interpreter would run that command line."""
    import runpy

    from fdpass import command

    parsed = command.parse_python_argv(argv)
    path_entry = main_path_entry(parsed.kind, parsed.target)
    sys.orig_argv = list(argv)

    if parsed.kind == "module":
        sys.argv = ["-m", *parsed.args]
        sys.path[:] = base_path if path_entry is None else [path_entry, *base_path]
        runpy.run_module(parsed.target, run_name="__main__", alter_sys=True)
        return

    if parsed.kind == "code":
        import types

        sys.argv = ["-c", *parsed.args]
        sys.path[:] = base_path if path_entry is None else [path_entry, *base_path]
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main
        exec(compile(parsed.target, "<string>", "exec"), main.__dict__)
        return

    sys.argv = [parsed.target, *parsed.args]
    # runpy.run_path() puts a directory or zip file on sys.path itself.
    if path_entry is None or path_entry == parsed.target:
        sys.path[:] = base_path
    else:
        sys.path[:] = [path_entry, *base_path]
    runpy.run_path(parsed.target, run_name="__main__")


def _control_socket() -> socket.socket:
    listen_env = protocol.decode_current_process()
    if listen_env.names != (STANDBY_FD_NAME,):
        raise SystemExit(
            f"fdpass._standby expects one fd named {STANDBY_FD_NAME!r} in LISTEN_FDNAMES, "
            f"not {listen_env.names!r}; it is started only by fdpass.Upgrader(prestart=...)"
        )
    fd = listen_env.fds[0]
    os.set_inheritable(fd, False)
    protocol.clear(os.environ)
    return socket.socket(fileno=fd)


def _receive_or_exit(control: socket.socket) -> tuple[object, list[int]]:
    """Receive the parent's next message, or exit with status 0 if the parent is gone."""
    try:
        message = receive_message(control)
    except (BrokenPipeError, ConnectionResetError):
        message = None
    # os._exit() skips the atexit handlers that preloaded modules registered
    # for a program that never ran.
    if message is None:
        os._exit(0)
    return message


def _origin(started: dict[str, Any], request: dict[str, Any], sigint_handler: object) -> dict[str, Any]:
    """Return what a successor forked now inherits, as fdpass.prestart.Standby names it.

    "preload" is the explicit module list of request, or None for the default one.
    """
    from fdpass import command, prestart

    parsed = command.parse_python_argv(sys.orig_argv)
    attributes = prestart._process_attributes()
    # A standby ignores SIGINT until its hand-over, which then restores sigint_handler.
    ignored = int(str(attributes["ignored signals"]), 16) & ~(1 << (signal.SIGINT - 1))
    if sigint_handler == signal.SIG_IGN:
        ignored |= 1 << (signal.SIGINT - 1)
    attributes["ignored signals"] = f"{ignored:016x}"

    return {
        **started,
        "interpreter": parsed.interpreter,
        "options": parsed.options,
        "process_attributes": attributes,
        "path_entry": request["path_entry"],
        "cwd": command.getcwd_or_none(),
        "preload": request["modules"] if request.get("explicit") else None,
    }


def fork_successor(control: socket.socket, origin: dict[str, Any]) -> socket.socket | None:
    """Fork the next standby, and return its control socket in the child and None in this process.

    A standby's start-up costs the interpreter's start and every import
    again, tens of ms of CPU while the new generation serves. A fork costs
    a copy of the page tables, and the copy-on-write faults that parent and
    child then take. Both take them at once, while they wait, through
    fdpass_unshare_private_pages(), so the program that this process runs
    after its hand-over takes none. The successor keeps this process's
    hash secret, address-space layout and stack canary, as a process that
    never restarted would. Upgrader(prestart_fork=False) starts each
    standby fresh instead.

    Forks only while this process runs a single thread, because a thread
    that a preloaded module started makes fork() unsafe. Returns None then
    too, and the generation starts a fresh standby.
    """
    global successor

    try:
        single_threaded = threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        single_threaded = False  # /proc is not mounted, so threads started from C cannot be counted
    if not single_threaded:
        return None
    from fdpass import _native

    # Without a successor, the generation starts a fresh standby.
    try:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        parent_end.close()
        child_end.close()
        return None
    if pid == 0:
        control.close()
        parent_end.close()
        try:
            _native.unshare_private_pages()
        except OSError:
            pass  # /proc is not mounted, so the faults come later, in whichever process writes first
        return child_end

    child_end.close()
    successor = Successor(pid, parent_end, origin)
    try:
        _native.unshare_private_pages()
    except OSError:
        pass
    return None


def _hand_over_keeping_successor(fds: list[int]) -> None:
    """Run _place_fds(), with the successor's control socket moved above the passed fds and kept."""
    global successor

    if successor is None:
        _place_fds(fds)
        return
    keep = fcntl.fcntl(successor.control.fileno(), fcntl.F_DUPFD_CLOEXEC, protocol.FIRST_FD + len(fds))
    successor.control.close()
    successor.control = socket.socket(fileno=keep)
    _place_fds(fds, keep)


def main() -> None:
    """Preload, report, wait for the hand-over, and run the program; see the module docstring."""
    started_ns = time.time_ns()
    sigint_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path.pop()  # the package directory that bootstrap_code() appended
    base_path = list(sys.path)
    control = _control_socket()

    from fdpass import prestart

    # A successor inherits these from this first standby, so they are read at its start.
    started = {
        "startup_variables": prestart._startup_variables(os.environ),
        "executable_id": prestart._executable_id(),
        "stdio_ids": prestart._stdio_ids(),
    }

    while True:
        request = _receive_or_exit(control)[0]
        if not isinstance(request, dict):
            raise StandbyProtocolError(f"expected a preload request object, not {request!r:.200}")
        names = request["modules"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise StandbyProtocolError(f"expected a list of module names, not {names!r:.200}")
        path_entry = request["path_entry"]
        # A module next to the script shadows the stdlib in a cold start, so it must here too.
        # A successor has the entry from its parent's request already.
        if isinstance(path_entry, str) and sys.path[:1] != [path_entry]:
            sys.path.insert(0, path_entry)
        failed = _preload(names)
        try:
            report = {
                "pid": os.getpid(),
                "modules": _module_files(started_ns),
                "pth_directories": base_path,
                "pth_files": pth_files(base_path, started_ns),
                "fds": open_fds(control.fileno()),
                "failed": failed,
            }
            send_message(control, report)
        except (BrokenPipeError, ConnectionResetError):
            os._exit(0)

        if not request.get("fork"):
            break
        try:
            origin = _origin(started, request, sigint_handler)
        except (OSError, ValueError):
            break  # a successor whose origin is unknown could not be checked, so none is forked
        successor_control = fork_successor(control, origin)
        if successor_control is None:
            break
        control = successor_control

    payload, fds = _receive_or_exit(control)
    control.close()
    if not isinstance(payload, dict):
        raise StandbyProtocolError(f"expected a hand-over object, not {payload!r}")
    declared = payload["env"].get(protocol.LISTEN_FDS)
    if declared != str(len(fds)):
        raise StandbyProtocolError(f"the hand-over carries {len(fds)} fds, but LISTEN_FDS is {declared!r}")

    _hand_over_keeping_successor(fds)
    _set_environment(payload["env"])
    # The program may hang before it creates its Upgrader, which would arm
    # the ready() deadline, so it is armed here. The parent's preload
    # usually has fdpass.upgrade imported already.
    from fdpass import upgrade

    upgrade._arm_ready_deadline()
    os.chdir(payload["cwd"])
    signal.signal(signal.SIGINT, sigint_handler)
    _run_program(payload["argv"], base_path)
