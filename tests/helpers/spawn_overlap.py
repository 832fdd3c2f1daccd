"""Spawn report_spawn.py with passed fds that sit on each other's target slots.

Run with only 0, 1 and 2 open. Four pipes then take fds 3..10 and the report
pipe 11 and 12. The passed order 12, 4, 3, 7, 5 gives targets 3..7: fd 4
stays in place, and 3, 5 and 7 are each the source of a later slot while also
being the target of an earlier one. Prints one JSON line with the expected
target of each slot, the child's report and its wait status.
"""

import json
import os
import sys

from fdpass import _native

REPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_spawn.py")

pipes = [os.pipe() for _ in range(4)]
report_read, report_write = os.pipe()
if [fd for pair in pipes for fd in pair] != list(range(3, 11)) or report_write != 12:
    raise SystemExit(f"expected pipes on 3..12, got {pipes} and {(report_read, report_write)}")

order = [report_write, 4, 3, 7, 5]
expected = {3 + index: os.readlink(f"/proc/self/fd/{fd}") for index, fd in enumerate(order)}
pid = _native.spawn_with_fds(sys.executable.encode(), [sys.executable.encode(), REPORT.encode()], [], order)
os.close(report_write)

with os.fdopen(report_read, "rb") as stream:
    report = json.loads(stream.read())
_, status = os.waitpid(pid, 0)

print(json.dumps({"expected": expected, "report": report, "status": status}))
