"""The fdpass command line: ``fdpass SUBCOMMAND`` or ``python -m fdpass SUBCOMMAND``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from fdpass import clirun


def _run_demo(args: argparse.Namespace) -> int:
    from fdpass import demo

    return demo.main(rounds=args.rounds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdpass",
        description="Restart and upgrade Linux programs in place without dropping their sockets.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="log more: -v for INFO, -vv for DEBUG (default: warnings only)",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = subcommands.add_parser(
        "demo",
        help="restart this process in place while a request is in flight, on loopback",
        description=(
            "Start a local server, connect, send a request, and restart with fdpass.reexec() "
            "before reading the response. The new run reads the response from the inherited "
            "socket and prints it with the measured restart latency."
        ),
    )
    demo.add_argument(
        "--rounds", type=int, default=1, metavar="N",
        help="number of in-place restarts in a row, each with a request in flight (default: 1)",
    )
    demo.set_defaults(handler=_run_demo)

    clirun.add_parser(subcommands)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    levels = {0: logging.WARNING, 1: logging.INFO}
    logging.basicConfig(level=levels.get(args.verbose, logging.DEBUG), format="%(name)s: %(message)s")
    return int(args.handler(args))
