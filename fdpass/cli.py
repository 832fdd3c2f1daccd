"""The fdpass command line: ``fdpass SUBCOMMAND`` or ``python -m fdpass SUBCOMMAND``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from fdpass import clirun


def _run_demo(args: argparse.Namespace) -> int:
    from fdpass import demo

    return demo.main(rounds=args.rounds)


def _run_bench(args: argparse.Namespace) -> int:
    from fdpass import benchmarks

    return benchmarks.main(
        fd_counts=args.fd_counts, rounds=args.rounds, repeats=args.repeats,
        import_runs=args.import_runs, plot_path=args.plot,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer of at least 1")
    return value


def _fd_counts(text: str) -> list[int]:
    import resource

    from fdpass.benchmarks import FD_HEADROOM

    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid fd counts {text!r}: expected positive integers such as 1,10,100"
        ) from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"invalid fd counts {text!r}: each count must be at least 1")

    # Checked here, so that a count no worker can open fails before any measurement starts.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and max(counts) + FD_HEADROOM > hard:
        raise argparse.ArgumentTypeError(
            f"invalid fd counts {text!r}: {max(counts)} fds plus {FD_HEADROOM} for the worker exceed the "
            f"RLIMIT_NOFILE hard limit of {hard}; pass at most {hard - FD_HEADROOM} or raise the limit (ulimit -Hn)"
        )
    return counts


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
        "--rounds", type=_positive_int, default=1, metavar="N",
        help="number of in-place restarts in a row, each with a request in flight (default: 1)",
    )
    demo.set_defaults(handler=_run_demo)

    clirun.add_parser(subcommands)

    bench = subcommands.add_parser(
        "bench",
        help="measure restart latency, per-fd cost, buffered reads and import time against the alternatives",
        description=(
            "Restart a worker program in place with fdpass, with the pure-Python path and with a plain "
            "execve that passes no fds, in one run, and print Markdown tables of medians and ratios."
        ),
    )
    bench.add_argument(
        "--fd-counts", type=_fd_counts, default=[1, 10, 100, 1000, 10000], metavar="N,N,...",
        help="numbers of sockets to pass (default: 1,10,100,1000,10000)",
    )
    bench.add_argument("--rounds", type=_positive_int, default=3, metavar="N",
                       help="restarts in a row per worker process (default: 3)")
    bench.add_argument("--repeats", type=_positive_int, default=15, metavar="N",
                       help="worker processes per mode and fd count, interleaved (default: 15)")
    bench.add_argument("--import-runs", type=_positive_int, default=40, metavar="N",
                       help="fresh interpreters per import statement (default: 40)")
    bench.add_argument(
        "--plot", default="fdpass-bench.png", metavar="PATH",
        help="PNG file for the latency plot; needs the plot extra (matplotlib); '' for none "
        "(default: fdpass-bench.png)",
    )
    bench.set_defaults(handler=_run_bench)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    levels = {0: logging.WARNING, 1: logging.INFO}
    logging.basicConfig(level=levels.get(args.verbose, logging.DEBUG), format="%(name)s: %(message)s")
    return int(args.handler(args))
