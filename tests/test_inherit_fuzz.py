"""Property test of fdpass.inherit() in real processes with crafted environments.

A helper forks once per case, lays out fds on 3, 4, ... (the passed ones
with FD_CLOEXEC clear, then closed slots and fds opened after exec with
FD_CLOEXEC set), sets LISTEN_* and FDPASS_SOCKETS, and calls inherit().
Whatever values the variables contain, inherit() must adopt only passed
fds, raise nothing but ValueError, and leave no LISTEN_* variable behind.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

#: Each case forks a process, so a few hundred cases take a few seconds.
CASES = 300

kinds = st.sampled_from(["socket", "pipe"])
after_slots = st.sampled_from(["closed", "cloexec"])
junk = st.text(alphabet="0123456789:$PID.*,-x ", max_size=12)


def often(value: str, otherwise: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Draw value about 4 times in 5, so the cases that pass every check are common."""
    return st.integers(0, 4).flatmap(lambda roll: otherwise if roll == 0 else st.just(value))


@st.composite
def cases(draw: st.DrawFn) -> dict[str, object]:
    passed = draw(st.lists(kinds, max_size=5))
    after = draw(st.lists(after_slots, max_size=3))
    declared = draw(st.one_of(st.just(len(passed)), st.integers(0, len(passed) + len(after) + 1)))
    env: dict[str, str] = {}

    if draw(st.integers(0, 9)) > 0:
        env["LISTEN_FDS"] = draw(often(str(declared), junk))
    if draw(st.integers(0, 9)) > 0:
        env["LISTEN_PID"] = draw(often("$PID", st.sampled_from(["1", "0$PID", "$PID0"]) | junk))
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["a", "b", "http", "", "x y"]), min_size=declared, max_size=declared))
        env["LISTEN_FDNAMES"] = draw(often(":".join(names), junk))
    if draw(st.booleans()):
        family = draw(st.sampled_from(["1", "2", "10", "-1", "99999999999"]))
        sock_type = draw(st.sampled_from(["1", "2", "5", "4294967297"]))
        protocol = draw(st.sampled_from(["0", "6", "-3", "99999999999999999999"]))
        run = f"{family}.{sock_type}.{protocol}.{draw(st.sampled_from(['0', '1', '2']))}"
        env["FDPASS_SOCKETS"] = draw(often(f"$PID:{declared}:{run}*{declared}", junk))

    return {"passed": passed, "after": after, "env": env}


@pytest.fixture
def fuzz_server(children):
    """One helper for all the cases of a test run: it forks a fresh process per case."""
    return children.helper("inherit_fuzz_server.py", stdin=subprocess.PIPE)


@settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_inherit_adopts_only_passed_fds(fuzz_server, case):
    """inherit() adopts only fds passed with FD_CLOEXEC clear, and raises only ValueError."""
    fuzz_server.popen.stdin.write((json.dumps(case) + "\n").encode())
    fuzz_server.popen.stdin.flush()
    result = fuzz_server.read_json()
    listen_pid = case["env"].get("LISTEN_PID")
    # --hypothesis-show-statistics lists these, to show how often each outcome comes up.
    event(f"raised {result['error']}" if result["error"] else f"adopted {len(result['adopted'])} fds")
    passed = list(range(3, 3 + len(case["passed"])))

    assert result["error"] in (None, "ValueError"), result
    assert set(result["adopted"]) <= set(passed), result
    assert result["env_left"] == [], result
    if result["error"] is not None:
        assert result["adopted"] == []
        # Nothing was adopted, so every passed fd keeps FD_CLOEXEC clear.
        assert result["cloexec_clear"][: len(passed)] == [True] * len(passed), result
    if listen_pid in ("1", "$PID0"):
        # LISTEN_PID names another process, and sd_listen_fds(3) then adopts nothing.
        assert result["adopted"] == [], result
    if result["error"] is None and result["adopted"]:
        assert result["adopted"] == list(range(3, 3 + len(result["adopted"])))
        # Adopted fds get FD_CLOEXEC, so a child process started later does not inherit them.
        assert not any(result["cloexec_clear"][: len(result["adopted"])]), result
