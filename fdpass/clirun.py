"""``fdpass run``: bind sockets, then exec or supervise a command that receives them.

Without --restart-on, fdpass binds every --listen address and execs COMMAND
in its own process, with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set, as
``systemd-socket-activate`` does. With --restart-on, it stays as a small
supervisor (fdpass.supervisor) that keeps the sockets open and starts a new
COMMAND on that signal.

Exit codes of ``fdpass run`` itself, before COMMAND runs:

- 2: a malformed command line, such as a bad --listen value or signal name;
- 1: a socket could not be bound, for example the port is already in use;
- 126: COMMAND was found but cannot be executed;
- 127: COMMAND was not found.

After that, ``fdpass run`` exits with COMMAND's status, or 128+N when
COMMAND was ended by signal N, as a shell reports it.
"""

from __future__ import annotations

import argparse
import errno as errno_module
import logging
import os
import shutil
import signal
import socket
import sys

from fdpass import cliaddress, protocol, restart

log = logging.getLogger("fdpass")

EXIT_USAGE = 2
EXIT_BIND_FAILED = 1
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: Signals that --restart-on cannot take: they cannot be caught, or the
#: supervisor already gives them a meaning.
_RESERVED_SIGNALS = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


class RunError(Exception):
    """An error that ends ``fdpass run`` with exit_code after printing the message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_signal(text: str) -> signal.Signals:
    """Return the signal named by text: HUP, SIGHUP, hup or 1.

    Raises argparse.ArgumentTypeError naming the value and the signals it may be.
    """
    name = text.strip().upper()
    try:
        if name.isdigit():
            signum = signal.Signals(int(name))
        else:
            signum = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown signal {text!r}; give a name such as HUP or USR2, or a number"
        ) from None

    if signum in _RESERVED_SIGNALS:
        raise argparse.ArgumentTypeError(
            f"--restart-on cannot be {signum.name}: SIGTERM and SIGINT stop the command, "
            "SIGKILL and SIGSTOP cannot be caught, and SIGCHLD reports exits; use HUP or USR2"
        )
    return signum


def _parse_listen(text: str) -> cliaddress.ListenSpec:
    try:
        spec = cliaddress.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None

    try:
        restart.check_not_reserved([spec.name])
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return spec


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _ready_mode(text: str) -> str | float:
    if text == "notify":
        return text
    try:
        return _positive_seconds(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"--ready {text!r}: expected 'notify' or a positive number of seconds"
        ) from None


def add_parser(subcommands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` subcommand to the fdpass parser."""
    run = subcommands.add_parser(
        "run",
        help="bind sockets and run a command that receives them through LISTEN_FDS",
        usage="fdpass run --listen [NAME=]ADDRESS [--listen ...] [--restart-on SIGNAL] -- COMMAND [ARGS...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Bind each --listen address, then run COMMAND with the sockets on fds 3, 4, ... in "
            "the order given, and LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set, as systemd "
            "socket activation does. Without --restart-on, fdpass execs COMMAND in its own "
            "process. With --restart-on, fdpass stays as a supervisor that holds the sockets, "
            "so a restart refuses no connection."
        ),
        epilog=(
            "ADDRESS forms:\n"
            "  HOST:PORT             TCP (PORT 0 picks a free port)\n"
            "  [IPV6]:PORT           TCP over IPv6\n"
            "  tcp:HOST:PORT         TCP, spelled out\n"
            "  udp:HOST:PORT         UDP; udp:[IPV6]:PORT for IPv6\n"
            "  unix:/PATH            Unix stream socket\n"
            "  unix-dgram:/PATH      Unix datagram socket\n"
            "  unix-seqpacket:/PATH  Unix seqpacket socket\n"
            "  unix:@NAME            Linux abstract Unix socket (also unix-dgram:@NAME, ...)\n"
            "\n"
            "exit status: COMMAND's status, or 128+N if signal N ended it; 2 for a bad command\n"
            "line, 1 if a socket cannot be bound, 126 if COMMAND cannot be executed, 127 if\n"
            "COMMAND is not found.\n"
        ),
    )
    # SUPPRESS keeps the value of `fdpass -v run` when `run -v` is not given.
    run.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS,
        help="log more: -v for INFO, such as each bound address and each restart, -vv for DEBUG "
        "(default: warnings only)",
    )
    run.add_argument(
        "--listen", "-l", dest="listen", action="append", type=_parse_listen, required=True,
        metavar="[NAME=]ADDRESS",
        help="bind a socket and pass it to COMMAND under NAME in LISTEN_FDNAMES "
        "(repeatable; fds are numbered from 3 in this order; default name: unknown)",
    )
    run.add_argument(
        "--backlog", type=int, default=None, metavar="N",
        help="listen() backlog of each stream and seqpacket socket, in connections "
        f"(default: SOMAXCONN, {socket.SOMAXCONN} here, capped by net.core.somaxconn)",
    )
    run.add_argument(
        "--restart-on", type=parse_signal, default=None, metavar="SIGNAL",
        help="stay as a supervisor and start a new COMMAND on SIGNAL, such as HUP or USR2 "
        "(default: none, so fdpass execs COMMAND and is gone)",
    )
    run.add_argument(
        "--ready", type=_ready_mode, default=None, metavar="notify|SECONDS",
        help="with --restart-on, when a new COMMAND counts as ready, so the old one is stopped: "
        "'notify' waits for READY=1 on the NOTIFY_SOCKET that fdpass sets; a number of seconds "
        "waits that long and checks that COMMAND still runs (default: notify)",
    )
    run.add_argument(
        "--ready-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
        help="with --ready notify, seconds to wait for READY=1 before the restart is given up "
        "and the new COMMAND is stopped; the old one keeps serving (default: 60)",
    )
    run.add_argument(
        "--stop-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL when fdpass stops a COMMAND (default: 30)",
    )
    run.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]",
        help="the program to run, after '--'",
    )
    run.set_defaults(handler=main)


def find_executable(command: str) -> str:
    """Return the path execve should use for command, looked up in PATH like a shell does.

    Raises RunError with exit code 127 (not found) or 126 (not executable).
    """
    found = shutil.which(command)
    if found is not None:
        return found

    if os.sep in command and os.path.exists(command):
        if os.path.isdir(command):
            raise RunError(f"command {command!r} is a directory; give the program to run", EXIT_CANNOT_EXECUTE)
        raise RunError(
            f"command {command!r} is not executable; run chmod +x {command} or name an executable file",
            EXIT_CANNOT_EXECUTE,
        )
    if os.sep in command:
        raise RunError(f"command {command!r} not found; check the path", EXIT_NOT_FOUND)
    raise RunError(
        f"command {command!r} not found in PATH; install it, give its full path, or fix PATH "
        f"(PATH={os.environ.get('PATH', '')})",
        EXIT_NOT_FOUND,
    )


def _bind_error(spec: cliaddress.ListenSpec, error: OSError) -> RunError:
    if error.errno == errno_module.EADDRINUSE and _is_unix_path(spec.address):
        # listen() checked the path before bind(), and its message names what is there: a
        # file that is not a socket, or a socket another process accepts on.
        return RunError(f"--listen {spec.text}: {error.strerror}", EXIT_BIND_FAILED)
    if isinstance(error, restart.AddressInUseByThisProcessError):
        return RunError(f"--listen {spec.text}: {error.strerror}", EXIT_BIND_FAILED)
    if error.errno == errno_module.EADDRINUSE:
        return RunError(
            f"--listen {spec.text}: address already in use; stop the program that listens there "
            "(ss -lntup shows it) or choose another address",
            EXIT_BIND_FAILED,
        )
    if error.errno == errno_module.EACCES:
        return RunError(
            f"--listen {spec.text}: permission denied; ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE, and a Unix socket needs write access to its directory",
            EXIT_BIND_FAILED,
        )
    if error.errno == errno_module.EADDRNOTAVAIL:
        return RunError(
            f"--listen {spec.text}: the address is not on any interface of this machine; "
            "use one it has, such as 127.0.0.1 or 0.0.0.0",
            EXIT_BIND_FAILED,
        )
    return RunError(f"--listen {spec.text}: cannot bind: {error.strerror or error}", EXIT_BIND_FAILED)


def _is_unix_path(address: object) -> bool:
    return isinstance(address, (str, bytes)) and not os.fsencode(address).startswith(b"\0")


def bind_all(specs: list[cliaddress.ListenSpec], backlog: int | None) -> list[tuple[str, socket.socket]]:
    """Bind (or adopt from LISTEN_FDS) one socket per spec and return (name, socket) in spec order.

    A socket this process inherited through LISTEN_FDS on the same address
    is reused, so ``fdpass run`` works as a systemd service whose socket
    unit already bound the address.
    """
    bound: list[tuple[str, socket.socket]] = []
    first_spec: dict[int, cliaddress.ListenSpec] = {}

    for spec in specs:
        try:
            # Unnamed, two values with port 0 get two sockets, as two
            # listen() calls without a name do.
            name = spec.name if spec.named else None
            sock = restart.listen(spec.address, type=spec.type, backlog=backlog, name=name)
        except ValueError as error:
            raise RunError(f"--listen {spec.text}: {error}", EXIT_USAGE) from None
        except OSError as error:
            raise _bind_error(spec, error) from None

        if id(sock) in first_spec:
            raise RunError(
                f"--listen {spec.text} repeats the address of --listen {first_spec[id(sock)].text}; "
                "give each address once",
                EXIT_USAGE,
            )
        first_spec[id(sock)] = spec
        # An unnamed value that reused an inherited socket keeps the name
        # that socket was passed under, as listen() registered it.
        name = spec.name
        if not spec.named:
            name = next((registered for registered, listener in restart.listeners() if listener is sock), name)
        bound.append((name, sock))
        # With port 0 this line is the only place the chosen port shows.
        fd = protocol.FIRST_FD + len(bound) - 1
        log.info("listening on %s as fd %d, named %r", cliaddress.format_bound(sock), fd, name)

    _close_unmatched_inherited(first_spec)
    return bound


def _close_unmatched_inherited(matched: dict[int, cliaddress.ListenSpec]) -> None:
    # COMMAND gets only the --listen sockets, so an inherited fd that matched
    # none would stay open in the supervisor for nothing.
    inherited = restart.inherit()
    for description, obj in zip(inherited.descriptions, inherited.objects, strict=True):
        if id(obj) in matched:
            continue
        log.info(
            "inherited fd %d (%s), named %r, matches no --listen; closing it",
            description.fd, description.kind, description.name,
        )
        if isinstance(obj, int):
            os.close(obj)
        else:
            obj.close()


def _command_argv(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command.pop(0)
    if not command:
        raise RunError("missing COMMAND; write fdpass run --listen ADDRESS -- COMMAND [ARGS...]", EXIT_USAGE)
    return command


def _exec(command: list[str], executable: str) -> int:
    # With no fds, reexec() passes every socket listen() returned, in order
    # and under its name, which bind_all() made exactly the --listen sockets.
    try:
        restart.reexec(argv=command, executable=executable)
    except OSError as error:
        code = EXIT_NOT_FOUND if error.errno == errno_module.ENOENT else EXIT_CANNOT_EXECUTE
        raise RunError(f"cannot execute {executable!r}: {error.strerror}", code) from None
    raise AssertionError("reexec returned without raising")


def _supervise(
    args: argparse.Namespace, command: list[str], executable: str, listeners: list[tuple[str, socket.socket]]
) -> int:
    from fdpass import supervisor

    try:
        return supervisor.Supervisor(
            command,
            executable,
            listeners,
            restart_signal=args.restart_on,
            ready="notify" if args.ready is None else args.ready,
            ready_timeout=60.0 if args.ready_timeout is None else args.ready_timeout,
            stop_timeout=30.0 if args.stop_timeout is None else args.stop_timeout,
        ).run()
    except OSError as error:
        code = EXIT_NOT_FOUND if error.errno == errno_module.ENOENT else EXIT_CANNOT_EXECUTE
        raise RunError(f"cannot start {executable!r}: {error.strerror}", code) from None


def main(args: argparse.Namespace) -> int:
    """Run ``fdpass run`` with parsed arguments and return the exit code."""
    try:
        command = _command_argv(args)
        executable = find_executable(command[0])
        if args.backlog is not None and args.backlog < 0:
            raise RunError(f"--backlog {args.backlog}: expected 0 or more connections", EXIT_USAGE)
        listeners = bind_all(args.listen, args.backlog)

        if args.restart_on is None:
            for option in ("ready", "ready_timeout", "stop_timeout"):
                if getattr(args, option) is not None:
                    flag = "--" + option.replace("_", "-")
                    raise RunError(
                        f"{flag} applies only to the supervisor; add --restart-on SIGNAL or drop {flag}", EXIT_USAGE
                    )
            return _exec(command, executable)

        return _supervise(args, command, executable, listeners)
    except RunError as error:
        print(f"fdpass run: error: {error}", file=sys.stderr)
        return error.exit_code
