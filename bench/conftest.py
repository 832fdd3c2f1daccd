"""Options for the benchmarks: ``pytest bench --fd-counts 1,10 --bench-rounds 2``.

CI runs ``pytest bench --benchmark-disable`` with small counts as a smoke test,
so the benchmarks keep working; no test here asserts a timing.
"""

from __future__ import annotations

import sys

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fdpass benchmarks")
    group.addoption(
        "--fd-counts", default="1,10,100,1000,10000",
        help="comma-separated numbers of sockets to pass (default: 1,10,100,1000,10000)",
    )
    group.addoption("--bench-rounds", type=int, default=10, help="restarts in a row per worker process (default: 10)")
    group.addoption("--bench-repeats", type=int, default=5, help="worker processes per mode, interleaved (default: 5)")

    upgrade = parser.getgroup("fdpass upgrade benchmark (bench/bench_upgrade.py)")
    upgrade.addoption(
        "--upgrade-python", default=sys.executable,
        help="interpreter that runs both servers; it needs fdpass, and tableflip for that side (default: this one)",
    )
    upgrade.addoption("--upgrade-rounds", type=int, default=20, help="upgrades in a row per side (default: 20)")
    upgrade.addoption(
        "--upgrade-period", type=float, default=0.7,
        help="seconds from one SIGHUP to the next, the same for every side, with the client sending; "
        "a round that takes longer starts the next one at once (default: 0.7)",
    )
    upgrade.addoption(
        "--upgrade-interval", type=float, default=None,
        help="wait this many seconds after each upgrade has ended, in place of --upgrade-period; "
        "a side with faster upgrades then gets more upgrades per second (default: unset)",
    )
    upgrade.addoption(
        "--upgrade-raw", default=None, metavar="PATH",
        help="also write every side's samples (each request's start and latency, each round's start) as JSON to PATH",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fd_count" in metafunc.fixturenames:
        counts = [int(part) for part in metafunc.config.getoption("--fd-counts").split(",")]
        metafunc.parametrize("fd_count", counts)


@pytest.fixture
def bench_rounds(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--bench-rounds"))


@pytest.fixture
def bench_repeats(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--bench-repeats"))


@pytest.fixture
def largest_fd_count(request: pytest.FixtureRequest) -> int:
    return max(int(part) for part in request.config.getoption("--fd-counts").split(","))
