"""Scheduler counters of every process in an upgrade of bench_upgrade.py's server, by time since SIGHUP.

bench_upgrade.py reports the client's p99; this script shows what causes
its slow requests. It runs one side's server (bench/upgrade_server.py) and
one client (bench/upgrade_client.py) sending without pause, sends SIGHUP
--rounds times, and samples every process involved every SAMPLE_SECONDS
for WINDOW_SECONDS after each SIGHUP, from /proc/PID/schedstat (CPU time
and run-queue wait of the main thread, in ns), /proc/PID/status
(nonvoluntary_ctxt_switches) and /proc/PID/stat (the CPU that the main
thread last ran on). While a serving generation waits in the run queue, a
request that has arrived waits too, and a server on the client's CPU can
be preempted at each of the client's wake-ups.

Each process gets a role per round: "old" received the SIGHUP, "new"
became ready in its place, "client" sends the requests, and "other" is
any other descendant of either generation, such as a prestart standby.
The first table gives the mean per upgrade of each figure in each time bin.
The second gives, per role and bin, the share of samples in which the
process last ran on the same CPU as the client. A blocked process counts
by the CPU it last ran on, and only each process's main thread is read, so
the fdpass-threads side's serving threads are not in it.

Usage: python bench/upgrade_timeline.py --library fdpass-prestart --python /path/to/python [--rounds 15]

It imports bench/bench_upgrade.py, so the interpreter that runs it needs
pytest, as the test extra installs it. The servers run on --python.

It needs Linux with CONFIG_PROC_CHILDREN (/proc/PID/task/TID/children) and
/proc/PID/schedstat. The sampling itself costs CPU: 0.37 ms per sample of
four processes on a 2-core AMD EPYC VM, about 7 % of one core (0.26 ms
without the read of /proc/PID/stat). So compare sides measured by this script
with each other, not with bench_upgrade.py.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import pathlib
import signal
import sys
import tempfile
import time

from bench_upgrade import EVENT_TIMEOUT, PR_SET_CHILD_SUBREAPER, Client, Server, free_port, wait_gone

SAMPLE_SECONDS = 0.005
WINDOW_SECONDS = 0.6
#: Bin edges in seconds after SIGHUP. A cold start is ready at about 60 ms, and a prestart generation starts its
#: standby when the old generation exits, about 55 ms after SIGHUP.
BIN_EDGES = (0.0, 0.01, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, WINDOW_SECONDS)
ROLES = ("old", "new", "other", "client")
#: The servers of bench/upgrade_server.py, which upgrade on SIGHUP.
LIBRARIES = ("fdpass", "fdpass-prestart", "fdpass-prestart-exec", "fdpass-threads", "tableflip")
FIGURES = (("wait", "run-queue wait, ms"), ("cpu", "CPU time, ms"), ("switches", "involuntary switches"))


#: Counters of one process's main thread: CPU ns, run-queue wait ns, involuntary switches, and the CPU it last ran on.
Counters = tuple[int, int, int, int]


def read_counters(pid: int) -> Counters | None:
    """Return the Counters of pid's main thread, or None once it has exited, even before it is reaped."""
    try:
        with open(f"/proc/{pid}/schedstat") as stream:
            cpu_ns, wait_ns, _ = stream.read().split()
        with open(f"/proc/{pid}/status") as stream:
            switches = next(line for line in stream if line.startswith("nonvoluntary_ctxt_switches"))
        with open(f"/proc/{pid}/stat") as stream:
            # Fields 3 (state) and 39 (processor), counted after the command name, which may contain spaces and ")".
            fields = stream.read().rsplit(")", 1)[1].split()
    except (OSError, StopIteration, ValueError, IndexError):
        return None

    # A zombie that is not reaped yet keeps its last CPU, which would count as a placement.
    if fields[0] in ("Z", "X"):
        return None
    return int(cpu_ns), int(wait_ns), int(switches.split()[1]), int(fields[36])


def children(pid: int) -> list[int]:
    """Return the PIDs of pid's children, from every thread's children list."""
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as stream:
                found += [int(child) for child in stream.read().split()]
    except OSError:
        pass
    return found


def descendants(pid: int, depth: int = 3) -> list[int]:
    """Return pid's children, grandchildren and so on, down to depth levels."""
    found = []
    level = [pid]
    for _ in range(depth):
        level = [child for parent in level for child in children(parent)]
        found += level
    return found


def bin_index(seconds: float) -> int:
    for index in range(len(BIN_EDGES) - 1):
        if seconds < BIN_EDGES[index + 1]:
            return index
    return len(BIN_EDGES) - 2


def sample_round(old: int, client_pid: int) -> dict[int, list[tuple[float, Counters]]]:
    """Send SIGHUP to old and sample every process involved for WINDOW_SECONDS; return samples per PID."""
    # A prestart standby already runs at SIGHUP, so its counters start here.
    samples: dict[int, list[tuple[float, Counters]]] = {}
    for pid in (old, client_pid, *descendants(old)):
        counters = read_counters(pid)
        if counters is not None:
            samples[pid] = [(0.0, counters)]

    started = time.monotonic()
    os.kill(old, signal.SIGHUP)
    while time.monotonic() - started < WINDOW_SECONDS:
        time.sleep(SAMPLE_SECONDS)
        elapsed = time.monotonic() - started
        # Once old exits, its children are this subreaper's, so they are searched from every known PID.
        known = [pid for pid in samples if pid != client_pid]
        for pid in {*samples, *(child for parent in known for child in descendants(parent))}:
            counters = read_counters(pid)
            if counters is None:
                continue
            # A process first seen now started during the round, from zero.
            history = samples.setdefault(pid, [(elapsed, (0, 0, 0, counters[3]))])
            history.append((elapsed, counters))
    return samples


def add_round(
    totals: dict[str, list[list[float]]], samples: dict[int, list[tuple[float, Counters]]],
    roles: dict[int, str], shared: dict[str, list[list[int]]],
) -> None:
    """Add one round's samples to totals, and to shared its [samples on the client's CPU, samples] per bin."""
    client_cpu = {}
    for pid, history in samples.items():
        if roles.get(pid) == "client":
            client_cpu = {seconds: counters[3] for seconds, counters in history}

    for pid, history in samples.items():
        role = roles.get(pid, "other")
        for (_, before), (seconds, after) in itertools.pairwise(history):
            index = bin_index(seconds)
            totals[role][0][index] += (after[1] - before[1]) / 1e6
            totals[role][1][index] += (after[0] - before[0]) / 1e6
            totals[role][2][index] += after[2] - before[2]
            # Every process is read in the same pass, so the client's sample has the same time.
            if role != "client" and seconds in client_cpu:
                shared[role][index][0] += after[3] == client_cpu[seconds]
                shared[role][index][1] += 1


def run(
    python: str, library: str, rounds: int, interval: float
) -> tuple[dict[str, list[list[float]]], dict[str, list[list[int]]]]:
    """Return the means per upgrade of FIGURES per role and bin, and add_round()'s shared counts."""
    totals = {role: [[0.0] * (len(BIN_EDGES) - 1) for _ in FIGURES] for role in ROLES}
    shared = {role: [[0, 0] for _ in range(len(BIN_EDGES) - 1)] for role in ROLES if role != "client"}
    with tempfile.TemporaryDirectory() as directory:
        server = Server(python, library, free_port(), pathlib.Path(directory) / "stderr.txt")
        try:
            ready = server.wait_for("pid", server.current, "ready")
            current = ready["pid"]
            with Client(python, server.port) as client:
                client.resume()
                time.sleep(1.0)
                for _ in range(rounds):
                    samples = sample_round(current, client.pid)
                    successor = server.wait_for("parent", current, "ready")["pid"]
                    wait_gone(current, EVENT_TIMEOUT)
                    roles = {current: "old", successor: "new", client.pid: "client"}
                    add_round(totals, samples, roles, shared)
                    current = successor
                    time.sleep(interval)
                client.pause()
            if client.errors:
                print(f"client errors: {len(client.errors)}, first: {client.errors[0]}", file=sys.stderr)
        finally:
            server.kill()
            reap_orphans()

    for role in ROLES:
        for figure in totals[role]:
            figure[:] = [value / rounds for value in figure]
    return totals, shared


def reap_orphans() -> None:
    """Reap the children that this subreaper adopted, such as a standby whose generation was killed."""
    for pid in descendants(os.getpid(), depth=1):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True, choices=LIBRARIES, help="the server of upgrade_server.py")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server and client")
    parser.add_argument("--rounds", type=int, default=15, help="upgrades to sample (default: 15)")
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between rounds (default: 0.3)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 1000:
        parser.error(f"--rounds must be between 1 and 1000, not {args.rounds}")
    if not 0 <= args.interval <= 60:
        parser.error(f"--interval must be between 0 and 60 seconds, not {args.interval}")
    if not os.access(args.python, os.X_OK) or os.path.isdir(args.python):
        parser.error(f"--python {args.python!r} is not an executable file")

    # SIGTERM and SIGHUP would end this process without the cleanup in run(), which kills the servers.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda received, frame: sys.exit(128 + received))

    # Orphans, such as a generation whose parent exited, are reparented here and reaped by reap_orphans().
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    totals, shared = run(args.python, args.library, args.rounds, args.interval)

    edges = [f"{low * 1000:g}-{high * 1000:g}" for low, high in itertools.pairwise(BIN_EDGES)]
    print(f"{args.library}: mean per upgrade over {args.rounds} upgrades, by ms after SIGHUP")
    print("| role | figure | " + " | ".join(edges) + " | total |")
    print("|---|---|" + "---|" * (len(edges) + 1))
    for role in ROLES:
        for (_, label), values in zip(FIGURES, totals[role], strict=True):
            print(f"| {role} | {label} | " + " | ".join(f"{value:.1f}" for value in values) + f" | {sum(values):.1f} |")

    print()
    print(f"{args.library}: share of samples on the client's CPU, %, by ms after SIGHUP")
    print("| role | " + " | ".join(edges) + " | all |")
    print("|---|" + "---|" * (len(edges) + 1))
    for role, counts in shared.items():
        cells = [share(*count) for count in counts]
        same, total = (sum(column) for column in zip(*counts, strict=True))
        print(f"| {role} | " + " | ".join(cells) + f" | {share(same, total)} |")


def share(same: int, total: int) -> str:
    return f"{100 * same / total:.0f}" if total else "-"


if __name__ == "__main__":
    main()
