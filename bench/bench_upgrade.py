"""Upgrade latency and client latency during upgrades: fdpass.Upgrader against tableflip.

Run it by name, since pytest does not collect bench_*.py on its own:

    pytest bench/bench_upgrade.py --upgrade-python /path/to/python --upgrade-rounds 20

Every side runs bench/upgrade_server.py, the same asyncio server (and its
threaded variant), on the interpreter given by --upgrade-python (default:
this one). The sides are FDPASS_SIDES and tableflip. tableflip from PyPI
needs Python 3.12 or newer; when that interpreter cannot import it, the
tableflip side is skipped. For each side the driver starts the first
generation, keeps one client process opening a connection and sending one
request at a time, and sends SIGHUP for each round. It waits until the new
generation is ready and the old one has exited, and starts the next round
--upgrade-period seconds after the last SIGHUP. Every side thus gets the
same upgrades per second, and its client the same share of requests sent
during upgrades. The sides take turns of BLOCK upgrades, and only the side
whose turn it is has its client sending.

Measured per side:
- upgrade latency: the seconds the old generation's upgrade() call took,
  which ends when the new generation has called ready();
- ready to return: from the new generation's ready() call until the old
  generation's upgrade() returned (both read CLOCK_MONOTONIC);
- start CPU: the CPU time the new generation used from its creation until
  ready(), which the load of other processes does not stretch; for
  fdpass-prestart-exec that includes the standby's start-up and preloading,
  and for fdpass-prestart the successor's fork and page copies;
- client latency: connect, request and response, for every request during
  the rounds, with every error kept;
- tracebacks: those the side's generations wrote to stderr, because a
  generation can fail after its last request without any client error.

The figures go to benchmark.extra_info (see --benchmark-json) and are
printed as a table, with fdpass's ratios to tableflip from the same run.
Nothing here asserts a timing.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import math
import os
import pathlib
import random
import select
import selectors
import signal
import socket
import statistics
import subprocess
import time
from typing import Any

import pytest

SERVER = pathlib.Path(__file__).with_name("upgrade_server.py")
PR_SET_CHILD_SUBREAPER = 36
EVENT_TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(900)


class Server:
    """The process group of one side's generations, and the events they write to the shared stdout."""

    def __init__(self, python: str, library: str, port: int, stderr_path: pathlib.Path) -> None:
        self.stderr_path = stderr_path
        self.library = library
        self.port = port
        self.popen = subprocess.Popen(
            [python, str(SERVER), library, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("wb"),
            start_new_session=True,
        )
        self.current = self.popen.pid
        self._buffer = b""
        self._pending: list[dict[str, Any]] = []

    def next_event(self, deadline: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(self.popen.stdout, selectors.EVENT_READ)
                if remaining <= 0 or not selector.select(remaining):
                    stderr = self.stderr_path.read_text()[-3000:]
                    raise TimeoutError(f"no event from the {self.library} server; stderr:\n{stderr}")
            chunk = os.read(self.popen.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError(f"server stdout closed; stderr:\n{self.stderr_path.read_text()[-3000:]}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    def wait_for(self, field: str, value: int, *kinds: str) -> dict[str, Any]:
        """Return the first event, read before or now, with event[field] == value and a kind in kinds."""
        for event in self._pending:
            if event.get(field) == value and event["event"] in kinds:
                self._pending.remove(event)
                return event

        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            event = self.next_event(deadline)
            if event.get(field) == value and event["event"] in kinds:
                return event
            self._pending.append(event)

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def wait_gone(pid: int, timeout: float = EVENT_TIMEOUT) -> None:
    """Wait until pid exits, then reap it: a child of this process or an orphan adopted by this subreaper.

    A pidfd wakes the driver once, at the exit, where a polling loop would
    wake it every few milliseconds while the client is being timed.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"generation {pid} did not exit within {timeout} s")
    finally:
        os.close(pidfd)

    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class Client:
    """bench/upgrade_client.py in a process of its own: a request on a new connection, again and again.

    It sends only while resumed, so one side's client can rest while
    another side is measured. Its own process keeps the driver's work off
    the GIL that the timed loop holds.
    """

    def __init__(self, python: str, port: int) -> None:
        self.python = python
        self.port = port
        self.latencies: list[float] = []
        # perf_counter() at the start of each request, for analysis by time.
        self.starts: list[float] = []
        self.errors: list[str] = []
        self._popen: subprocess.Popen[bytes] | None = None

    def _send(self, command: bytes) -> None:
        assert self._popen is not None and self._popen.stdin is not None
        self._popen.stdin.write(command)
        self._popen.stdin.flush()

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    def resume(self) -> None:
        self._send(b"r")

    def pause(self) -> None:
        """Stop sending and return once the request in flight has finished."""
        self._send(b"p")
        assert self._popen is not None and self._popen.stdout is not None
        if self._popen.stdout.readline() != b"p\n":
            raise RuntimeError(f"the client on port {self.port} did not confirm the pause")

    def __enter__(self) -> Client:
        client = pathlib.Path(__file__).with_name("upgrade_client.py")
        self._popen = subprocess.Popen(
            [self.python, str(client), str(self.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._popen is None:
            return
        try:
            try:
                self._send(b"q")
            except BrokenPipeError:
                # The client has exited already, for example on the same Ctrl-C, so it sends no report.
                return
            assert self._popen.stdout is not None
            report = json.loads(self._popen.stdout.readline() or b"{}")
            self.latencies = report.get("latencies", [])
            self.starts = report.get("starts", [])
            self.errors = report.get("errors", [])
            self._popen.wait(30)
        finally:
            if self._popen.poll() is None:
                self._popen.kill()
                self._popen.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Side:
    """One library's server, its client, and the samples of its upgrades."""

    def __init__(self, python: str, library: str, tmp_path: pathlib.Path) -> None:
        self.library = library
        # The control side serves with the fdpass server and never upgrades.
        self.server_library = "fdpass" if library == CONTROL else library
        self.server = self._start(python, tmp_path)
        self.port = self.server.port
        self.client = Client(python, self.port)
        self.upgrade_seconds: list[float] = []
        # From the new generation's ready() call until the old one's upgrade() returned.
        self.ready_delays: list[float] = []
        # CPU time the new generation used from its creation until ready(),
        # which other processes' load does not stretch as it does wall time.
        self.start_cpu_seconds: list[float] = []
        self.failures: list[str] = []
        # perf_counter() when the client was resumed and when it had paused, per turn.
        self.turns: list[tuple[float, float]] = []
        # perf_counter() when each round began: SIGHUP, or for the control side, the same point of its round.
        self.round_starts: list[float] = []

    def _start(self, python: str, tmp_path: pathlib.Path) -> Server:
        """Start the first generation on a free port and wait until it is ready.

        Other programs on this machine may take the port between the probe
        and the server's bind(), so a failed start is retried on another.
        """
        for attempt in range(3):
            stderr_path = tmp_path / f"{self.library}-stderr-{attempt}.txt"
            server = Server(python, self.server_library, free_port(), stderr_path)
            try:
                server.wait_for("pid", server.current, "ready")
            except EOFError:
                server.kill()
                if "Address already in use" not in server.stderr_path.read_text():
                    raise
                continue
            except BaseException:
                server.kill()
                raise
            return server
        raise RuntimeError(f"the {self.library} server found no free port in 3 attempts")

    def upgrade_once(self) -> None:
        """Send SIGHUP, record the outcome, and wait until the old generation has exited.

        The control side does nothing here, so its turns measure the
        machine with the same client and no upgrade.
        """
        self.round_starts.append(time.perf_counter())
        if self.library == CONTROL:
            return
        server = self.server
        old = server.current
        os.kill(old, signal.SIGHUP)

        outcome = server.wait_for("pid", old, "upgraded", "upgrade-failed")
        if outcome["event"] == "upgrade-failed":
            self.failures.append(outcome["error"])
            return
        self.upgrade_seconds.append(outcome["seconds"])
        # tableflip's upgrade() returns no PID, so the new generation names its parent.
        ready = server.wait_for("parent", old, "ready")
        self.ready_delays.append(outcome["ended_at"] - ready["ready_at"])
        self.start_cpu_seconds.append(ready["cpu_seconds"])
        wait_gone(old)
        # Each library refuses an upgrade until the new generation has seen its parent exit.
        server.wait_for("pid", ready["pid"], "parent-gone")
        server.current = ready["pid"]

    def raw(self) -> dict[str, Any]:
        return {
            "upgrade_seconds": self.upgrade_seconds,
            "ready_delays": self.ready_delays,
            "start_cpu_seconds": self.start_cpu_seconds,
            "latencies": self.client.latencies,
            "starts": self.client.starts,
            "turns": self.turns,
            "round_starts": self.round_starts,
            "errors": self.client.errors,
            "failures": self.failures,
            "tracebacks": self.tracebacks(),
        }

    def tracebacks(self) -> list[str]:
        """Return each traceback that a generation of this side wrote to stderr."""
        text = self.server.stderr_path.read_text(errors="replace")
        marker = "Traceback (most recent call last):"
        return [marker + part for part in text.split(marker)[1:]]


#: Upgrades of one side in a row before the next side takes its turn.
BLOCK = 5

#: The fdpass servers of bench/upgrade_server.py, each compared with tableflip.
FDPASS_SIDES = ("fdpass", "fdpass-prestart", "fdpass-prestart-exec", "fdpass-threads")

#: A side whose server is never upgraded: the client latency this machine gives without upgrades.
CONTROL = "no-upgrade"

#: Resamples of the turns for the interval around each p99 ratio.
BOOTSTRAP_RESAMPLES = 200

#: Seconds after each round's start whose requests count as "during the upgrade". It covers
#: a cold start (about 60 ms), the old generation's 50 ms drain and exit, and a standby's start-up
#: after that exit, with room for a loaded machine.
UPGRADE_WINDOW = 0.3


def run_interleaved(
    python: str,
    libraries: list[str],
    rounds: int,
    tmp_path: pathlib.Path,
    period: float = 0.0,
    interval: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Upgrade each library's server in turns of BLOCK upgrades, each under its own client's load.

    All servers stay up for the whole run, but only the side being measured
    has its client sending, so each side's upgrades see the same load: one
    server, one client. The turns rotate, so slow phases of the machine fall
    on every side alike. Rounds start period seconds apart, or, with
    interval, interval seconds after the previous upgrade has ended.
    """
    sides: list[Side] = []
    try:
        for library in libraries:
            sides.append(Side(python, library, tmp_path))
        for side in sides:
            side.client.__enter__()
        done = 0
        turn = 0
        while done < rounds:
            count = min(BLOCK, rounds - done)
            shift = turn % len(sides)
            for side in sides[shift:] + sides[:shift]:
                begun = time.perf_counter()
                side.client.resume()
                for _ in range(count):
                    side.upgrade_once()
                    # The client keeps sending, so its latencies include
                    # the new generation's work after ready(), such as
                    # starting its standby.
                    if interval is not None:
                        time.sleep(interval)
                    else:
                        time.sleep(max(0.0, side.round_starts[-1] + period - time.perf_counter()))
                side.client.pause()
                side.turns.append((begun, time.perf_counter()))
            done += count
            turn += 1
    finally:
        for side in sides:
            try:
                side.client.__exit__()
            finally:
                side.server.kill()

    return {side.library: side.raw() for side in sides}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median_ms(samples: list[float]) -> float:
    """Return the median in ms, or NaN for the control side, which has no upgrades."""
    return statistics.median(samples) * 1000 if samples else math.nan


def summarize(raw: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    """Return the table row of one side. window is windowed(raw), which the caller computes once."""
    latencies = raw["latencies"]
    return {
        "upgrades": len(raw["upgrade_seconds"]),
        "upgrade_median_ms": median_ms(raw["upgrade_seconds"]),
        "upgrade_max_ms": max(raw["upgrade_seconds"], default=math.nan) * 1000,
        "ready_to_return_median_ms": median_ms(raw["ready_delays"]),
        "start_cpu_median_ms": median_ms(raw["start_cpu_seconds"]),
        "requests": len(latencies),
        "errors": len(raw["errors"]),
        "failed_upgrades": len(raw["failures"]),
        "tracebacks": len(raw["tracebacks"]),
        "client_p50_ms": percentile(latencies, 0.50) * 1000,
        "client_p99_ms": percentile(latencies, 0.99) * 1000,
        "client_max_ms": max(latencies) * 1000,
        "window_requests": len(window["latencies"]),
        "window_p99_ms": percentile(window["latencies"], 0.99) * 1000,
    }


def windowed(raw: dict[str, Any]) -> dict[str, Any]:
    """Return raw with only the requests that started within UPGRADE_WINDOW of a round's start."""
    round_starts = raw["round_starts"]
    starts = []
    latencies = []
    for started, latency in zip(raw["starts"], raw["latencies"], strict=True):
        index = bisect.bisect_right(round_starts, started) - 1
        if index >= 0 and started - round_starts[index] < UPGRADE_WINDOW:
            starts.append(started)
            latencies.append(latency)
    return {**raw, "starts": starts, "latencies": latencies}


def latencies_by_turn(raw: dict[str, Any]) -> list[list[float]]:
    """Split a side's latencies into its turns, by the time each request started."""
    turns: list[list[float]] = [[] for _ in raw["turns"]]
    ends = [end for _, end in raw["turns"]]
    for started, latency in zip(raw["starts"], raw["latencies"], strict=True):
        index = bisect.bisect_left(ends, started)
        if index < len(turns):
            turns[index].append(latency)
    return turns


class TurnTails:
    """Each turn's latencies, sorted, for the p99 of many resamples of the turns.

    A resample's p99 lies in the slowest part of the turns drawn, so each
    resample first sorts only the slowest tenth of each turn it drew, and
    sorts everything only when that part turns out too short.
    """

    TAIL_SHARE = 0.1

    def __init__(self, turns: list[list[float]]) -> None:
        self.sorted_turns = [sorted(turn) for turn in turns]
        self.tails = [turn[len(turn) - math.ceil(len(turn) * self.TAIL_SHARE) :] for turn in self.sorted_turns]

    def p99(self, picks: list[int]) -> float:
        total = sum(len(self.sorted_turns[pick]) for pick in picks)
        rank = round(0.99 * (total - 1))
        above = total - 1 - rank
        tail = sorted(latency for pick in picks for latency in self.tails[pick])
        if above < len(tail):
            value = tail[len(tail) - 1 - above]
            # Exact when every drawn turn's own tail reaches below the value.
            if all(not self.tails[pick] or self.tails[pick][0] <= value for pick in picks):
                return value
        return percentile([latency for pick in picks for latency in self.sorted_turns[pick]], 0.99)


def p99_ratio_interval(side: dict[str, Any], baseline: dict[str, Any], seed: int = 1) -> tuple[float, float]:
    """Return the 2.5th and 97.5th percentiles of p99(side) / p99(baseline) over resampled turns.

    Turn k of both sides ran in the same rotation, so the pairs are drawn
    together, which keeps slow phases of the machine on both sides of a
    resample.
    """
    side_turns = TurnTails(latencies_by_turn(side))
    baseline_turns = TurnTails(latencies_by_turn(baseline))
    pairs = min(len(side_turns.sorted_turns), len(baseline_turns.sorted_turns))
    generator = random.Random(seed)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picks = [generator.randrange(pairs) for _ in range(pairs)]
        ratios.append(side_turns.p99(picks) / baseline_turns.p99(picks))
    return percentile(ratios, 0.025), percentile(ratios, 0.975)


def can_import(python: str, module: str) -> bool:
    # "python -c" puts the working directory first on sys.path, so a check run
    # from a checkout would find the uncompiled source tree. The servers run as
    # scripts from SERVER's directory, and the check runs there too.
    result = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, timeout=60, cwd=SERVER.parent
    )
    return result.returncode == 0


@pytest.fixture
def subreaper() -> Any:
    """Adopt generations whose parent exited, so wait_gone() can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) failed")
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_upgrade_latency_against_tableflip(
    benchmark: Any, subreaper: Any, tmp_path: pathlib.Path, request: Any
) -> None:
    """Median upgrade latency and client p99 of fdpass and tableflip, same server, same load, one run."""
    python = request.config.getoption("--upgrade-python")
    rounds = request.config.getoption("--upgrade-rounds")
    period = request.config.getoption("--upgrade-period")
    interval = request.config.getoption("--upgrade-interval")
    if not can_import(python, "fdpass"):
        pytest.skip(f"{python} cannot import fdpass; install it there or pass --upgrade-python")
    sides = [*FDPASS_SIDES, CONTROL] + (["tableflip"] if can_import(python, "tableflip") else [])

    raw: dict[str, dict[str, Any]] = {}

    def measure() -> None:
        raw.update(run_interleaved(python, sides, rounds, tmp_path, period, interval))

    benchmark.pedantic(measure, rounds=1, iterations=1)

    raw_path = request.config.getoption("--upgrade-raw")
    if raw_path is not None:
        pathlib.Path(raw_path).write_text(json.dumps(raw))

    windows = {library: windowed(samples) for library, samples in raw.items()}
    summary = {library: summarize(samples, windows[library]) for library, samples in raw.items()}
    for library, row in summary.items():
        benchmark.extra_info.update({f"{library}_{key}": value for key, value in row.items()})
    if "tableflip" in summary:
        baseline = summary["tableflip"]
        for library in FDPASS_SIDES:
            row = summary[library]
            ratio = row["upgrade_median_ms"] / baseline["upgrade_median_ms"]
            benchmark.extra_info[f"{library}_upgrade_median_ratio"] = ratio
    for baseline_name in ("tableflip", CONTROL):
        for library in [*FDPASS_SIDES, "tableflip"]:
            if library == baseline_name or baseline_name not in summary or library not in summary:
                continue
            for metric, samples in (("client_p99", raw), ("window_p99", windows)):
                key = f"{library}_{metric}_vs_{baseline_name}"
                benchmark.extra_info[key] = summary[library][f"{metric}_ms"] / summary[baseline_name][f"{metric}_ms"]
                benchmark.extra_info[f"{key}_interval"] = list(
                    p99_ratio_interval(samples[library], samples[baseline_name])
                )
    schedule = f"one every {period:g} s" if interval is None else f"each {interval:g} s after the last one ended"
    print_table(python, rounds, schedule, summary, benchmark.extra_info)
    for library, samples in raw.items():
        for error in samples["errors"][:5] + samples["failures"][:5] + samples["tracebacks"][:1]:
            print(f"{library}: {error}")

    for library in FDPASS_SIDES:
        assert summary[library]["upgrades"] == rounds, raw[library]["failures"]
        assert raw[library]["errors"] == []
        assert raw[library]["tracebacks"] == []
    # A failed request without any upgrade points at the machine or the client, not at a library.
    assert raw[CONTROL]["errors"] == []


def print_table(
    python: str, rounds: int, schedule: str, summary: dict[str, dict[str, Any]], extra: dict[str, Any]
) -> None:
    columns = [
        ("upgrades", "{:d}"), ("upgrade_median_ms", "{:.1f}"), ("upgrade_max_ms", "{:.1f}"),
        ("ready_to_return_median_ms", "{:.2f}"), ("start_cpu_median_ms", "{:.1f}"),
        ("requests", "{:d}"), ("errors", "{:d}"), ("failed_upgrades", "{:d}"), ("tracebacks", "{:d}"),
        ("client_p50_ms", "{:.2f}"), ("client_p99_ms", "{:.2f}"), ("client_max_ms", "{:.1f}"),
        ("window_requests", "{:d}"), ("window_p99_ms", "{:.2f}"),
    ]
    print(f"\nupgrade benchmark: {rounds} upgrades per side, {schedule}, servers on {python}")
    print("| library | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for library, row in summary.items():
        print(f"| {library} | " + " | ".join(fmt.format(row[name]) for name, fmt in columns) + " |")
    for library in FDPASS_SIDES:
        if f"{library}_upgrade_median_ratio" in extra:
            print(f"{library} / tableflip: median upgrade latency {extra[f'{library}_upgrade_median_ratio']:.2f}x")
    print(f"p99 ratios; in brackets, the 2.5th-97.5th percentile over {BOOTSTRAP_RESAMPLES} resamples of the turns")
    for baseline_name in ("tableflip", CONTROL):
        for library in [*FDPASS_SIDES, "tableflip"]:
            figures = []
            for metric in ("client_p99", "window_p99"):
                key = f"{library}_{metric}_vs_{baseline_name}"
                if key in extra:
                    low, high = extra[f"{key}_interval"]
                    figures.append(f"{metric} {extra[key]:.2f}x [{low:.2f}-{high:.2f}]")
            if figures:
                print(f"{library} / {baseline_name}: " + ", ".join(figures))
