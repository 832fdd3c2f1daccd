"""reexec() closes every fd it does not pass, however far above the passed ones it sits.

fdpass_exec() lists /proc/self/fd from the first slot after the passed fds,
so these tests put inheritable fds right after the passed range and far above it.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("passed", [1, 3, 300])
def test_unpassed_inheritable_fds_closed(children, passed):
    """Only the passed sockets, on 3 .. 2 + passed, are open in the new run."""
    child = children.helper("unpassed_fds.py", str(passed))

    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["kinds"] == ["socket"] * passed
    # listdir() keeps one fd open on /proc/self/fd while it reads.
    assert [fd for fd in report["open_fds"] if fd < 3 + passed] == list(range(3, 3 + passed))
    assert len([fd for fd in report["open_fds"] if fd >= 3 + passed]) <= 1
    assert 3 + passed + 200 not in report["open_fds"]
