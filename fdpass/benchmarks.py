"""Measure fdpass against the alternatives in one run: ``python -m fdpass bench``.

Four measurements, each reported as a ratio against an alternative measured
in the same run:

1. restart latency, from the restart call in the old image until the new
   image holds its rebuilt sockets, for fdpass, the pure-Python path
   (os.set_inheritable, os.execve, socket.socket(fileno=)) and the floor (an
   execve of the same program with no fds);
2. the per-fd cost of preparing the fds in the old image and of rebuilding
   them in the new one;
3. the read throughput of a loopback TCP connection whose kernel buffers were
   filled before a restart (fdpass or pure Python), against one that never
   restarted;
4. the wall time of ``import fdpass`` against ``import socket`` in fresh
   interpreters.

The restarted program is fdpass._bench_worker. Every number is a median.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fdpass import _bench_worker

DEFAULT_FD_COUNTS = (1, 10, 100, 1000, 10000)
LATENCY_MODES = _bench_worker.LATENCY_MODES
# Extra fds each worker needs above the passed ones (stdio, /proc/self/fd, the
# interpreter's own).
FD_HEADROOM = 64
# Upper bound for one worker chain, so a hung restart fails the run.
WORKER_TIMEOUT_SECONDS = 300


@dataclass
class Results:
    """Every sample of one run, in nanoseconds, keyed by what was measured."""

    fd_counts: tuple[int, ...]
    # CPU time of the restarting process at the same three points.
    cpu_latency: dict[tuple[str, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    # (mode, fd count) -> [(t0, t_main, t_ready)]: the restart call, the first
    # line after the imports in the new image, and the rebuilt sockets.
    latency: dict[tuple[str, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    # mode -> [(bytes read, nanoseconds)]
    reads: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # statement -> [seconds of wall time for a fresh interpreter]
    imports: dict[str, list[float]] = field(default_factory=dict)
    # statement -> [seconds of CPU time (user + system) of that interpreter]
    import_cpu: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def interpreter() -> str:
    """Return sys.executable, after checking that it is a binary and not a shim script."""
    with open(sys.executable, "rb") as binary:
        magic = binary.read(4)
    if magic != b"\x7fELF":
        raise RuntimeError(
            f"{sys.executable} is not an ELF binary (a pyenv shim?); run the benchmark "
            "with the real interpreter, for example a venv's bin/python"
        )
    return sys.executable


def raise_fd_limit(needed: int) -> str | None:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit if needed is above it.

    Returns a line that describes the change, or None. Raises RuntimeError if
    even the hard limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return None
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise RuntimeError(
            f"{needed} fds are needed but the RLIMIT_NOFILE hard limit is {hard}; "
            "raise it (ulimit -Hn) or pass smaller fd counts"
        )

    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return f"raised the RLIMIT_NOFILE soft limit from {soft} to {hard} for {needed} fds"


def run_worker(mode: str, count: int, rounds: int, cwd: str) -> list[list[int]]:
    """Run one chain of restarts of fdpass._bench_worker and return its result lines."""
    # cwd is an empty directory, so "import fdpass" in the worker finds the
    # installed package and not a source checkout in the caller's directory.
    completed = subprocess.run(
        [interpreter(), "-m", "fdpass._bench_worker", mode, str(count), str(rounds)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        close_fds=True,
        timeout=WORKER_TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {mode} with {count} fds exited with {completed.returncode}:\n"
            + completed.stderr.decode(errors="replace")
        )

    lines = [[int(value) for value in line.split()] for line in completed.stdout.decode().splitlines()]
    if len(lines) != rounds:
        raise RuntimeError(f"benchmark worker {mode} with {count} fds reported {len(lines)} rounds, expected {rounds}")
    return lines


def measure_latency(results: Results, rounds: int, repeats: int, cwd: str) -> None:
    """Collect rounds x repeats restarts for every mode and fd count, interleaved.

    The order of the modes rotates from one repeat to the next, so a change
    in machine load does not always land on the same mode.
    """
    for repeat in range(repeats):
        for count in results.fd_counts:
            shift = repeat % len(LATENCY_MODES)
            for mode in LATENCY_MODES[shift:] + LATENCY_MODES[:shift]:
                samples = results.latency.setdefault((mode, count), [])
                cpu_samples = results.cpu_latency.setdefault((mode, count), [])
                for t0, t_main, t_ready, t0_cpu, t_main_cpu, t_ready_cpu in run_worker(mode, count, rounds, cwd):
                    samples.append((t0, t_main, t_ready))
                    cpu_samples.append((t0_cpu, t_main_cpu, t_ready_cpu))


def measure_reads(results: Results, rounds: int, repeats: int, cwd: str) -> None:
    """Collect buffered reads after an fdpass restart, after a pure-Python one and without one, interleaved."""
    for _ in range(repeats):
        for mode in _bench_worker.READ_MODES:
            samples = results.reads.setdefault(mode, [])
            for length, elapsed in run_worker(mode, 0, rounds, cwd):
                samples.append((length, elapsed))


IMPORT_STATEMENTS = ("pass", "import socket", "import fdpass")


def measure_imports(results: Results, runs: int, cwd: str) -> None:
    """Time fresh interpreters that run each of IMPORT_STATEMENTS, interleaved."""
    for _ in range(runs):
        for statement in IMPORT_STATEMENTS:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([interpreter(), "-c", statement], cwd=cwd, stdin=subprocess.DEVNULL, check=True)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            results.imports.setdefault(statement, []).append(elapsed)
            results.import_cpu.setdefault(statement, []).append(cpu)


def run(
    fd_counts: Sequence[int] = DEFAULT_FD_COUNTS,
    rounds: int = 3,
    repeats: int = 15,
    import_runs: int = 40,
    progress: Callable[[str], None] | None = None,
) -> Results:
    """Run every measurement and return the samples."""
    counts = tuple(sorted(set(fd_counts)))
    if not counts or counts[0] < 1:
        raise ValueError(f"fd counts must be positive integers, not {list(fd_counts)}")
    if rounds < 1 or repeats < 1 or import_runs < 1:
        raise ValueError(f"rounds, repeats and import runs must be at least 1, not {rounds}, {repeats}, {import_runs}")
    results = Results(fd_counts=counts)
    say = progress or (lambda line: None)

    limit_note = raise_fd_limit(counts[-1] + FD_HEADROOM)
    if limit_note:
        results.notes.append(limit_note)
        say(limit_note)

    with tempfile.TemporaryDirectory(prefix="fdpass-bench-") as cwd:
        say(f"restart latency: {repeats} x {rounds} restarts per mode and fd count {list(counts)}")
        measure_latency(results, rounds, repeats, cwd)
        say(f"buffered reads: {repeats} x {rounds} per mode")
        measure_reads(results, rounds, repeats, cwd)
        say(f"imports: {import_runs} fresh interpreters per statement")
        measure_imports(results, import_runs, cwd)

    return results


# --- Summaries -----------------------------------------------------------


def _median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) / 1e6


@dataclass(frozen=True)
class LatencyRow:
    """Median restart latency in ms for one fd count, and its ratios."""

    count: int
    floor_ms: float
    python_ms: float
    fdpass_ms: float

    @property
    def vs_floor(self) -> float:
        return self.fdpass_ms / self.floor_ms

    @property
    def vs_python(self) -> float:
        return self.fdpass_ms / self.python_ms

    @property
    def above_floor_ms(self) -> float:
        return self.fdpass_ms - self.floor_ms


def _clock_samples(results: Results, cpu: bool) -> dict[tuple[str, int], list[tuple[int, int, int]]]:
    return results.cpu_latency if cpu else results.latency


def latency_rows(results: Results, cpu: bool = False) -> list[LatencyRow]:
    """Return one LatencyRow per fd count, of wall time or, with cpu, of CPU time."""
    samples = _clock_samples(results, cpu)
    rows = []
    for count in results.fd_counts:
        medians = {
            mode: _median_ms([t_ready - t0 for t0, _, t_ready in samples[(mode, count)]])
            for mode in LATENCY_MODES
        }
        rows.append(LatencyRow(count, medians["floor"], medians["python"], medians["fdpass"]))
    return rows


@dataclass(frozen=True)
class PerFdRow:
    """Per-fd cost in microseconds of each step, at one fd count, for one mode."""

    mode: str
    count: int
    prepare_us: float
    rebuild_us: float


def per_fd_rows(results: Results, cpu: bool = False) -> list[PerFdRow]:
    """Return the per-fd prepare and rebuild cost of fdpass and pure Python.

    prepare is the median time from the restart call to the first line after
    the imports in the new image, less the floor's, over the fd count: the
    old image's work plus what execve does per fd. rebuild is the median time
    from there until the sockets are rebuilt, less the floor's, over the fd count.
    """
    clock_samples = _clock_samples(results, cpu)
    rows = []
    for count in results.fd_counts:
        floor = clock_samples[("floor", count)]
        floor_prepare = statistics.median([t_main - t0 for t0, t_main, _ in floor])
        floor_rebuild = statistics.median([t_ready - t_main for _, t_main, t_ready in floor])
        for mode in ("fdpass", "python"):
            samples = clock_samples[(mode, count)]
            prepare = statistics.median([t_main - t0 for t0, t_main, _ in samples]) - floor_prepare
            rebuild = statistics.median([t_ready - t_main for _, t_main, t_ready in samples]) - floor_rebuild
            rows.append(PerFdRow(mode, count, prepare / count / 1e3, rebuild / count / 1e3))
    return rows


def read_throughput(results: Results) -> dict[str, tuple[float, int]]:
    """Return mode -> (median MB/s, median bytes per read)."""
    summary = {}
    for mode, samples in results.reads.items():
        rates = [length / elapsed * 1e3 for length, elapsed in samples]
        summary[mode] = (statistics.median(rates), int(statistics.median([length for length, _ in samples])))
    return summary


def import_ms(results: Results, cpu: bool = False) -> dict[str, float]:
    """Return statement -> median wall time, or with cpu CPU time, of a fresh interpreter in ms."""
    samples = results.import_cpu if cpu else results.imports
    return {statement: statistics.median(times) * 1e3 for statement, times in samples.items()}


@dataclass(frozen=True)
class Target:
    """One target from the benchmark's goals and whether this run met it."""

    description: str
    measured: str
    met: bool


def targets(results: Results, cpu: bool = False) -> list[Target]:
    """Check the run against the targets; a target whose fd count was not run is left out.

    With cpu, the latency, per-fd and import targets use CPU time in place
    of wall time. The throughput target is the same either way.
    """
    checks = []
    rows = {row.count: row for row in latency_rows(results, cpu)}

    small = [row for row in rows.values() if row.count <= 100]
    if small:
        worst = max(small, key=lambda row: row.vs_floor)
        checks.append(Target(
            "restart latency <= 1.02 x floor at <= 100 fds",
            f"worst {worst.vs_floor:.3f} x at {worst.count} fds",
            worst.vs_floor <= 1.02,
        ))
    if 10000 in rows:
        row = rows[10000]
        checks.append(Target("restart latency <= 0.90 x pure Python at 10000 fds",
                             f"{row.vs_python:.3f} x", row.vs_python <= 0.90))
        checks.append(Target("restart latency <= floor + 3 ms at 10000 fds",
                             f"floor + {row.above_floor_ms:.2f} ms", row.above_floor_ms <= 3.0))

    largest = results.fd_counts[-1]
    per_fd = {row.mode: row for row in per_fd_rows(results, cpu) if row.count == largest}
    rebuild_ratio = per_fd["fdpass"].rebuild_us / per_fd["python"].rebuild_us
    checks.append(Target(
        "rebuild per fd <= 0.5 x socket.socket(fileno=)",
        f"{per_fd['fdpass'].rebuild_us:.3f} / {per_fd['python'].rebuild_us:.3f} us = {rebuild_ratio:.2f} x "
        f"at {largest} fds",
        rebuild_ratio <= 0.5,
    ))

    reads = read_throughput(results)
    read_ratio = reads["read-restart"][0] / reads["read-direct"][0]
    checks.append(Target("throughput after restart >= 0.95 x", f"{read_ratio:.3f} x", read_ratio >= 0.95))

    imports = import_ms(results, cpu)
    import_delta = imports["import fdpass"] - imports["import socket"]
    checks.append(Target("import fdpass <= import socket + 3 ms", f"+{import_delta:.2f} ms", import_delta <= 3.0))

    return checks


def _latency_table(results: Results, cpu: bool) -> list[str]:
    lines = ["| fds | floor | pure Python | fdpass | fdpass / floor | fdpass / pure Python | fdpass - floor |"]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for row in latency_rows(results, cpu):
        lines.append(
            f"| {row.count} | {row.floor_ms:.2f} | {row.python_ms:.2f} | {row.fdpass_ms:.2f} | "
            f"{row.vs_floor:.3f} | {row.vs_python:.3f} | {row.above_floor_ms:+.2f} ms |"
        )
    return lines


def _per_fd_table(results: Results, cpu: bool) -> list[str]:
    lines = ["| fds | fdpass prepare | pure Python prepare | fdpass rebuild | pure Python rebuild | rebuild ratio |"]
    lines.append("|---:|---:|---:|---:|---:|---:|")
    by_count: dict[int, dict[str, PerFdRow]] = {}
    for per_fd in per_fd_rows(results, cpu):
        by_count.setdefault(per_fd.count, {})[per_fd.mode] = per_fd
    for count, modes in by_count.items():
        if count < 100:
            continue
        fd_row, py_row = modes["fdpass"], modes["python"]
        lines.append(
            f"| {count} | {fd_row.prepare_us:.3f} | {py_row.prepare_us:.3f} | {fd_row.rebuild_us:.3f} | "
            f"{py_row.rebuild_us:.3f} | {fd_row.rebuild_us / py_row.rebuild_us:.2f} |"
        )
    return lines


def format_report(results: Results) -> str:
    """Return the Markdown tables of one run."""
    lines = ["## Restart latency (median wall ms, from the restart call to rebuilt sockets)", ""]
    lines += _latency_table(results, cpu=False)
    lines += ["", "## Restart CPU time (median CPU ms of the restarting process, same interval)", ""]
    lines += _latency_table(results, cpu=True)

    lines += ["", "## Per-fd cost (median wall us per fd, floor subtracted)", ""]
    lines += _per_fd_table(results, cpu=False)
    lines += ["", "## Per-fd cost (median CPU us per fd, floor subtracted)", ""]
    lines += _per_fd_table(results, cpu=True)

    reads = read_throughput(results)
    direct_rate, direct_bytes = reads["read-direct"]
    restart_rate, restart_bytes = reads["read-restart"]
    python_rate, python_bytes = reads["read-python-restart"]
    lines += ["", "## Buffered-read throughput (median MB/s, every byte checked)", ""]
    lines.append("| socket | bytes buffered | MB/s | ratio |")
    lines.append("|---|---:|---:|---:|")
    lines.append(f"| never restarted | {direct_bytes} | {direct_rate:.0f} | 1.000 |")
    restart_ratio = restart_rate / direct_rate
    lines.append(f"| inherited after reexec() | {restart_bytes} | {restart_rate:.0f} | {restart_ratio:.3f} |")
    python_ratio = python_rate / direct_rate
    lines.append(
        f"| inherited after a pure-Python restart | {python_bytes} | {python_rate:.0f} | {python_ratio:.3f} |"
    )

    imports = import_ms(results)
    import_cpu = import_ms(results, cpu=True)
    lines += ["", "## Import cost (median ms of a fresh interpreter: wall time, and CPU time)", ""]
    lines.append("| statement | wall ms | minus `import socket` | CPU ms | minus `import socket` |")
    lines.append("|---|---:|---:|---:|---:|")
    for statement in IMPORT_STATEMENTS:
        delta = imports[statement] - imports["import socket"]
        cpu_delta = import_cpu[statement] - import_cpu["import socket"]
        lines.append(
            f"| `{statement}` | {imports[statement]:.2f} | {delta:+.2f} | "
            f"{import_cpu[statement]:.2f} | {cpu_delta:+.2f} |"
        )

    lines += ["", "## Targets", ""]
    lines.append("| target | wall time | met | CPU time | met |")
    lines.append("|---|---|---|---|---|")
    for wall, cpu in zip(targets(results), targets(results, cpu=True), strict=True):
        cpu_cells = f"{cpu.measured} | {'yes' if cpu.met else 'NO'}" if cpu != wall else "same | "
        lines.append(f"| {wall.description} | {wall.measured} | {'yes' if wall.met else 'NO'} | {cpu_cells} |")

    return "\n".join(lines) + "\n"


def write_plot(results: Results, path: str) -> None:
    """Write a PNG of median restart latency against fd count, one line per mode.

    Raises ImportError if matplotlib (the ``plot`` extra) is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    rows = latency_rows(results)
    counts = [row.count for row in rows]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    axes.plot(counts, [row.fdpass_ms for row in rows], marker="o", label="fdpass")
    axes.plot(counts, [row.python_ms for row in rows], marker="s", label="pure Python")
    axes.plot(counts, [row.floor_ms for row in rows], marker="^", linestyle="--", label="floor (execve, no fds)")
    axes.set_xscale("log")
    axes.set_xlabel("passed sockets")
    axes.set_ylabel("median restart latency (ms)")
    axes.set_title("Restart latency against passed sockets")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def describe_machine() -> str:
    """Return one line about the CPU, the core count, the kernel and the interpreter."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {os.uname().release}, "
        f"CPython {sys.version.split()[0]} ({interpreter()})"
    )


def main(
    fd_counts: Sequence[int] = DEFAULT_FD_COUNTS,
    rounds: int = 3,
    repeats: int = 15,
    import_runs: int = 40,
    plot_path: str = "",
) -> int:
    """Run the benchmarks, print the report and write the plot; return the exit status."""
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = run(fd_counts, rounds, repeats, import_runs, progress=say)

    print(f"Machine: {describe_machine()}")
    print(f"Command: {' '.join(sys.orig_argv)}")
    for note in results.notes:
        print(f"Note: {note}")
    print()
    print(format_report(results))

    if plot_path:
        try:
            write_plot(results, plot_path)
        except ImportError:
            say(f"matplotlib is not installed, so no plot was written to {plot_path}; install fdpass[plot]")
        else:
            say(f"wrote the restart latency plot to {plot_path}")
    return 0
