"""Invalid command-line values: exit 2 and an argparse message that quotes the value, never a traceback."""

from __future__ import annotations

import resource
import sys

import pytest


def fdpass_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fdpass", *args]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--listen", "fdpass-x=127.0.0.1:0", "--", "true"], "'fdpass-x=127.0.0.1:0'"),
        (["demo", "--rounds", "0"], "argument --rounds: invalid value '0'"),
        (["demo", "--rounds", "-3"], "argument --rounds: invalid value '-3'"),
        (["bench", "--rounds", "0"], "argument --rounds: invalid value '0'"),
        (["bench", "--repeats", "0"], "argument --repeats: invalid value '0'"),
        (["bench", "--import-runs", "0"], "argument --import-runs: invalid value '0'"),
        (["bench", "--rounds", "many"], "argument --rounds: invalid value 'many'"),
    ],
)
def test_invalid_value_exits_2(children, args, expected):
    """Each invalid value gives exit 2 and a message that quotes it."""
    child = children.start(fdpass_command(*args))
    status, _, stderr = child.finish()

    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert expected in stderr


def test_reserved_listen_name_explained(children):
    """A --listen name with the reserved 'fdpass-' prefix is rejected with the reason."""
    child = children.start(fdpass_command("run", "--listen", "fdpass-x=127.0.0.1:0", "--", "true"))
    status, _, stderr = child.finish()

    assert status == 2, stderr
    assert "'fdpass-x'" in stderr
    assert "reserves" in stderr


def test_fd_count_above_hard_limit(children):
    """An fd count the RLIMIT_NOFILE hard limit cannot hold is rejected before any measurement, naming the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_NOFILE has no hard limit here, so no fd count exceeds it")
    count = hard + 1

    child = children.start(fdpass_command("bench", "--fd-counts", f"1,{count}"))
    status, _, stderr = child.finish()

    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert f"'1,{count}'" in stderr
    assert f"RLIMIT_NOFILE hard limit of {hard}" in stderr
