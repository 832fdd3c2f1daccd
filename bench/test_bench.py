"""Benchmarks of fdpass against the alternatives, each measured side by side in one run.

Each benchmark runs fdpass.benchmarks, records medians and ratios in
benchmark.extra_info (see --benchmark-json) and checks only that every
measurement produced its samples. ``python -m fdpass bench`` prints the same
measurements as tables.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from fdpass import benchmarks

pytestmark = pytest.mark.timeout(1200)


def _results(fd_counts: tuple[int, ...]) -> benchmarks.Results:
    results = benchmarks.Results(fd_counts=fd_counts)
    note = benchmarks.raise_fd_limit(max(fd_counts) + benchmarks.FD_HEADROOM)
    if note:
        print(note)
    return results


def test_restart_latency(
    benchmark: Any, tmp_path: pathlib.Path, fd_count: int, bench_rounds: int, bench_repeats: int
) -> None:
    """fdpass, pure Python and the floor restart with fd_count sockets, interleaved."""
    results = _results((fd_count,))

    benchmark.pedantic(
        benchmarks.measure_latency, args=(results, bench_rounds, bench_repeats, str(tmp_path)), rounds=1, iterations=1
    )

    for mode in benchmarks.LATENCY_MODES:
        assert len(results.latency[(mode, fd_count)]) == bench_rounds * bench_repeats
    (row,) = benchmarks.latency_rows(results)
    benchmark.extra_info.update(
        floor_ms=row.floor_ms, python_ms=row.python_ms, fdpass_ms=row.fdpass_ms,
        fdpass_vs_floor=row.vs_floor, fdpass_vs_python=row.vs_python,
    )


def test_per_fd_cost(
    benchmark: Any, tmp_path: pathlib.Path, largest_fd_count: int, bench_rounds: int, bench_repeats: int
) -> None:
    """Prepare and rebuild cost per fd of fdpass and pure Python, at the largest fd count."""
    results = _results((largest_fd_count,))

    benchmark.pedantic(
        benchmarks.measure_latency, args=(results, bench_rounds, bench_repeats, str(tmp_path)), rounds=1, iterations=1
    )

    rows = {row.mode: row for row in benchmarks.per_fd_rows(results)}
    assert set(rows) == {"fdpass", "python"}
    for mode, row in rows.items():
        benchmark.extra_info[f"{mode}_prepare_us_per_fd"] = row.prepare_us
        benchmark.extra_info[f"{mode}_rebuild_us_per_fd"] = row.rebuild_us


def test_buffered_read_throughput(
    benchmark: Any, tmp_path: pathlib.Path, bench_rounds: int, bench_repeats: int
) -> None:
    """Reading a full loopback connection after reexec(), after a pure-Python restart, and with no restart."""
    results = _results((1,))

    benchmark.pedantic(
        benchmarks.measure_reads, args=(results, bench_rounds, bench_repeats, str(tmp_path)), rounds=1, iterations=1
    )

    reads = benchmarks.read_throughput(results)
    for mode in ("read-restart", "read-python-restart"):
        assert len(results.reads[mode]) == bench_rounds * bench_repeats
        assert reads[mode][1] > 1 << 20, f"{mode}: expected more than 1 MiB in the kernel buffers"
    benchmark.extra_info.update(
        direct_mb_per_s=reads["read-direct"][0],
        restart_mb_per_s=reads["read-restart"][0],
        python_restart_mb_per_s=reads["read-python-restart"][0],
        restart_vs_direct=reads["read-restart"][0] / reads["read-direct"][0],
        python_restart_vs_direct=reads["read-python-restart"][0] / reads["read-direct"][0],
    )


def test_import_cost(benchmark: Any, tmp_path: pathlib.Path, bench_repeats: int) -> None:
    """import fdpass against import socket, each in fresh interpreters."""
    results = _results((1,))

    benchmark.pedantic(
        benchmarks.measure_imports, args=(results, 4 * bench_repeats, str(tmp_path)), rounds=1, iterations=1
    )

    imports = benchmarks.import_ms(results)
    assert set(imports) == set(benchmarks.IMPORT_STATEMENTS)
    benchmark.extra_info.update(
        imports_ms=imports, fdpass_minus_socket_ms=imports["import fdpass"] - imports["import socket"]
    )


def test_report_and_plot(benchmark: Any, tmp_path: pathlib.Path) -> None:
    """python -m fdpass bench's tables and plot, from one small run."""
    plot = tmp_path / "latency.png"

    results = benchmark.pedantic(benchmarks.run, args=((1, 2), 1, 1, 1), rounds=1, iterations=1)
    report = benchmarks.format_report(results)

    assert "| 2 |" in report
    assert "## Targets" in report
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib (the plot extra) is not installed")
    benchmarks.write_plot(results, str(plot))
    assert plot.read_bytes().startswith(b"\x89PNG")


def run_script(benchmark: Any, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run bench/NAME with args once under benchmark, on this interpreter; return the finished process."""
    script = pathlib.Path(__file__).with_name(name)
    result: subprocess.CompletedProcess[str] = benchmark.pedantic(
        subprocess.run,
        args=([sys.executable, str(script), *args],),
        kwargs={"capture_output": True, "text": True, "timeout": 120},
        rounds=1,
        iterations=1,
    )
    return result


def test_constructor_cost_script(benchmark: Any) -> None:
    """bench/constructor_cost.py, which bounds the rebuild ratio, runs and prints its table."""
    result = run_script(benchmark, "constructor_cost.py", "--sockets", "50", "--repeats", "1")

    assert result.returncode == 0, result.stderr
    assert "| socket.socket(family, type, proto, fd) |" in result.stdout
    assert "| FD_CLOEXEC scan" in result.stdout


def test_upgrade_timeline_script(benchmark: Any) -> None:
    """bench/upgrade_timeline.py upgrades a prestart server twice and prints its tables, with a standby's rows."""
    result = run_script(benchmark, "upgrade_timeline.py", "--library", "fdpass-prestart", "--rounds", "2")

    assert result.returncode == 0, result.stderr
    assert "| new | run-queue wait, ms |" in result.stdout
    other_cpu = next(line for line in result.stdout.splitlines() if line.startswith("| other | CPU time, ms |"))
    # The standby that each new generation starts is sampled as "other".
    assert float(other_cpu.rstrip(" |").rsplit("|", 1)[1]) > 0, result.stdout
    share_table = result.stdout.split("share of samples on the client's CPU")[1]
    new_share = next(line for line in share_table.splitlines() if line.startswith("| new | "))
    # Every sample of the new generation is compared with the client's, so its overall share is a number.
    assert 0 <= float(new_share.rstrip(" |").rsplit("|", 1)[1]) <= 100, result.stdout


def test_slow_requests_by_time_after_sighup() -> None:
    """pool_upgrade_runs.py counts each request above the threshold once, in the bin of its start after SIGHUP."""
    import pool_upgrade_runs

    # Rounds start at t=10 and t=11. The slow requests start 3, 120 and 700 ms
    # after the first SIGHUP and 3 ms after the second. The one at t=9.9
    # started before any round, so no bin counts it.
    side = {
        "round_starts": [10.0, 11.0],
        "starts": [9.9, 10.003, 10.004, 10.12, 10.7, 11.003],
        "latencies": [0.009, 0.009, 0.001, 0.009, 0.009, 0.009],
    }
    per_bin = pool_upgrade_runs.slow_requests_per_upgrade([{"fdpass": side}], "fdpass", threshold=0.005)

    edges = pool_upgrade_runs.SLOW_BIN_EDGES
    assert per_bin[edges.index(0.0)] == 1.0
    assert per_bin[edges.index(0.1)] == 0.5
    assert per_bin[edges.index(0.6)] == 0.5
    assert sum(per_bin) == 2.0
