"""Pool several runs of bench_upgrade.py and print each side's p99 ratio to tableflip over all of them.

One run's p99 ratio moves by a few percent from run to run on the same
machine, so a gap of that size needs more than one run. Pass the files that
--upgrade-raw wrote, one per run:

    python bench/pool_upgrade_runs.py run1.json run2.json ...

Run it with the interpreter that ran the benchmark, since it imports
bench_upgrade.py, which needs pytest. Each p99 is taken over the requests
of every turn of every run. The interval resamples turns across the runs,
drawing turn k of a side and of tableflip from the same run as a pair, as
bench_upgrade.p99_ratio_interval() does within one run.

A second table shows where in a round the slow requests fall: per upgrade,
the requests slower than tableflip's pooled client p99, by the time they
started after the round's SIGHUP.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import pathlib
import random
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from bench_upgrade import (
    BOOTSTRAP_RESAMPLES,
    CONTROL,
    FDPASS_SIDES,
    TurnTails,
    latencies_by_turn,
    percentile,
    windowed,
)

BASELINE = "tableflip"

#: Edges, in seconds after a round's SIGHUP, of the bins of the slow-request table; the last bin is open.
SLOW_BIN_EDGES = (0.0, 0.005, 0.01, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.6)


def paired_turns(runs: list[dict[str, Any]], side: str, metric: str) -> tuple[TurnTails, TurnTails]:
    """Return the turns of side and of BASELINE in every run, cut to the same count per run."""
    side_turns: list[list[float]] = []
    baseline_turns: list[list[float]] = []
    for run in runs:
        if metric == "window_p99":
            side_run, baseline_run = windowed(run[side]), windowed(run[BASELINE])
        else:
            side_run, baseline_run = run[side], run[BASELINE]
        own = latencies_by_turn(side_run)
        theirs = latencies_by_turn(baseline_run)
        pairs = min(len(own), len(theirs))
        side_turns += own[:pairs]
        baseline_turns += theirs[:pairs]
    return TurnTails(side_turns), TurnTails(baseline_turns)


def pooled_ratio(runs: list[dict[str, Any]], side: str, metric: str) -> str:
    side_tails, baseline_tails = paired_turns(runs, side, metric)
    every_turn = list(range(len(side_tails.sorted_turns)))
    side_p99 = side_tails.p99(every_turn)
    baseline_p99 = baseline_tails.p99(every_turn)

    generator = random.Random(1)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picks = [generator.randrange(len(every_turn)) for _ in every_turn]
        ratios.append(side_tails.p99(picks) / baseline_tails.p99(picks))

    return (
        f"{metric} {side_p99 * 1000:.3f} / {baseline_p99 * 1000:.3f} ms = {side_p99 / baseline_p99:.2f}x "
        f"[{percentile(ratios, 0.025):.2f}-{percentile(ratios, 0.975):.2f}]"
    )


def slow_requests_per_upgrade(runs: list[dict[str, Any]], side: str, threshold: float) -> list[float]:
    """Return, per bin of SLOW_BIN_EDGES, the requests slower than threshold per round of side."""
    counts = [0] * len(SLOW_BIN_EDGES)
    rounds = 0
    for run in runs:
        round_starts = run[side]["round_starts"]
        rounds += len(round_starts)
        for started, latency in zip(run[side]["starts"], run[side]["latencies"], strict=True):
            index = bisect.bisect_right(round_starts, started) - 1
            if index < 0 or latency <= threshold:
                continue
            counts[bisect.bisect_right(SLOW_BIN_EDGES, started - round_starts[index]) - 1] += 1
    return [count / rounds if rounds else math.nan for count in counts]


def print_slow_requests(runs: list[dict[str, Any]], sides: list[str]) -> None:
    baseline_latencies = [latency for run in runs for latency in run[BASELINE]["latencies"]]
    threshold = percentile(baseline_latencies, 0.99)
    labels = [f"{low * 1000:g}-{high * 1000:g}" for low, high in itertools.pairwise(SLOW_BIN_EDGES)]
    labels.append(f"{SLOW_BIN_EDGES[-1] * 1000:g}-")

    print()
    print(f"requests slower than {BASELINE}'s pooled client p99 ({threshold * 1000:.3f} ms) per upgrade,")
    print("by the ms after SIGHUP at which they started")
    print(f"| side | {' | '.join(labels)} | all |")
    print(f"|---|{'---|' * (len(labels) + 1)}")
    for side in sides:
        per_bin = slow_requests_per_upgrade(runs, side, threshold)
        print(f"| {side} | {' | '.join(f'{count:.2f}' for count in per_bin)} | {sum(per_bin):.2f} |")


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(pathlib.Path(path).read_text()))
        except (OSError, ValueError) as error:
            print(f"cannot read {path} as a --upgrade-raw file: {error}", file=sys.stderr)
            return 2
    missing = [path for path, run in zip(paths, runs, strict=True) if BASELINE not in run]
    if missing:
        print(
            f"no {BASELINE} side in {', '.join(missing)}: run the benchmark with an --upgrade-python "
            f"that can import {BASELINE}",
            file=sys.stderr,
        )
        return 2

    print(f"p99 ratios to {BASELINE} over {len(runs)} runs; in brackets, the 2.5th-97.5th percentile over")
    print(f"{BOOTSTRAP_RESAMPLES} resamples of the turns of all runs")
    sides = [side for side in [*FDPASS_SIDES, CONTROL] if all(side in run for run in runs)]
    for side in sides:
        client = pooled_ratio(runs, side, "client_p99")
        window = pooled_ratio(runs, side, "window_p99")
        print(f"{side} / {BASELINE}: {client}, {window}")

    print_slow_requests(runs, [BASELINE, *sides])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
