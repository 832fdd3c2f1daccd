"""fdpass_move_to_cpu(), which moves the event loop's thread onto a standby's CPU (see Standby.start_move())."""

from __future__ import annotations

import os
import queue
import threading

import pytest

from fdpass import _native

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs in this process's affinity mask"),
]


def this_cpu() -> int:
    with open("/proc/thread-self/stat") as stream:
        return int(stream.read().rsplit(")", 1)[1].split()[36])


def in_new_thread(function):
    """Run function in a new thread, whose changes to its own affinity mask end with it; return its result."""
    results: queue.Queue[object] = queue.Queue()

    def run() -> None:
        try:
            results.put(function())
        except BaseException as error:
            results.put(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(20)
    result = results.get(timeout=1)
    if isinstance(result, BaseException):
        raise result
    return result


#: The scheduler may migrate a thread between this_cpu() and move_to_cpu(),
#: which then reads another starting CPU, so each case below has this many tries.
ATTEMPTS = 10


def test_thread_moves_and_keeps_its_mask():
    def move():
        attempts = []
        for _ in range(ATTEMPTS):
            mask = os.sched_getaffinity(0)
            target = min(mask - {this_cpu()})
            moved = _native.move_to_cpu(target)
            attempts.append((mask, target, moved, this_cpu(), os.sched_getaffinity(0)))
            if moved:
                break
        return attempts

    attempts = in_new_thread(move)
    mask, target, moved, cpu_after, mask_after = attempts[-1]

    assert moved, attempts
    assert cpu_after == target
    assert mask_after == mask
    assert all(after == before for before, _, _, _, after in attempts), attempts


def test_current_cpu_is_not_a_move():
    def move():
        results = []
        for _ in range(ATTEMPTS):
            results.append(_native.move_to_cpu(this_cpu()))
            if results[-1] is False:
                break
        return results

    results = in_new_thread(move)

    assert results[-1] is False, results


def test_single_cpu_mask_is_left_alone():
    def move():
        pinned = {this_cpu()}
        os.sched_setaffinity(0, pinned)
        other = min(set(range(os.cpu_count() or 2)) - pinned)
        return _native.move_to_cpu(other), os.sched_getaffinity(0), pinned

    moved, mask_after, pinned = in_new_thread(move)

    assert not moved
    assert mask_after == pinned


def test_cpu_outside_the_mask_is_not_used():
    def move():
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, mask - {max(mask)})
        narrowed = os.sched_getaffinity(0)
        return _native.move_to_cpu(max(mask)), os.sched_getaffinity(0), narrowed

    moved, mask_after, narrowed = in_new_thread(move)

    assert not moved
    assert mask_after == narrowed


@pytest.mark.parametrize("cpu", [-1, 1 << 20])
def test_impossible_cpu_raises_einval(cpu):
    with pytest.raises(OSError) as raised:
        _native.move_to_cpu(cpu)

    assert raised.value.errno == 22
