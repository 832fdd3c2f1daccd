"""What fdpass logs under the "fdpass" logger, and that the library prints nothing."""

from __future__ import annotations

from conftest import HELPERS


def run_report(children, mode: str, path: str) -> tuple[int, str, str]:
    child = children.python(str(HELPERS / "logging_report.py"), mode, path)
    return child.finish()


def test_restart_and_adoption_are_logged(children, tmp_path):
    """reexec() logs the fds and names it passes, and inherit() in the new run logs what it adopted."""
    path = str(tmp_path / "control.sock")
    status, stdout, stderr = run_report(children, "restart", path)

    assert status == 0, stderr
    assert stdout == "first run\nsecond run adopted ['http', 'control']\n"
    restart_lines = [line for line in stderr.splitlines() if "restarting in place" in line]
    assert len(restart_lines) == 1
    assert restart_lines[0].startswith("fdpass INFO restarting in place: executing ")
    assert "with 2 fds (" in restart_lines[0]
    assert "='http'" in restart_lines[0]
    assert "='control'" in restart_lines[0]
    assert "fdpass INFO adopted 2 fds: 3='http' (socket), 4='control' (socket)" in stderr


def test_failed_exec_is_logged(children, tmp_path):
    """A failed execve is logged as a WARNING that names the path, and reexec() raises."""
    missing = str(tmp_path / "no-such-program")
    status, stdout, stderr = run_report(children, "exec-fails", missing)

    assert status == 0, stderr
    assert stdout == "reexec raised 2\n"
    assert f"fdpass WARNING restart failed: execve({missing}): No such file or directory" in stderr


def test_malformed_environment_is_logged(children, tmp_path):
    """inherit() logs a WARNING naming the malformed variable before it raises."""
    status, stdout, stderr = run_report(children, "bad-env", str(tmp_path))

    assert status == 0, stderr
    assert stdout == "inherit raised\n"
    assert "fdpass WARNING adopted no fds: LISTEN_FDNAMES has 1 names but LISTEN_FDS=2" in stderr


def test_stale_unix_socket_removal_is_logged(children, tmp_path):
    """listen() logs the path of a stale Unix socket file it removes before binding."""
    path = str(tmp_path / "stale.sock")
    status, stdout, stderr = run_report(children, "stale-unix", path)

    assert status == 0, stderr
    assert stdout == "bound\n"
    assert f"fdpass INFO removed stale Unix socket {path}: nothing accepts connections on it" in stderr
