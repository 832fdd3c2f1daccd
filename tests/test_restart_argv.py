"""reexec() re-runs the program the way it was started, and leaks no fd."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from conftest import HELPERS, clean_environment

ARGS = ["plain", "with space", "--flag=value", "", "ünïcode", "-m"]

#: The fds the loop passes from its second run on, in order, by name.
PASSED = [[3, "listener", "socket"], [4, "pair", "socket"], [5, "pipe", "fifo"]]


def write_launcher(directory) -> str:
    """Write an executable like a console-script entry point and return its path."""
    launcher = directory / "restart-loop"
    launcher.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from restartpkg.loop import main\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return str(launcher)


def run_loop(children, argv, restarts, **options):
    child = children.start(argv, **options)
    reports = [child.read_json() for _ in range(restarts + 1)]
    status, rest, stderr = child.finish()

    assert status == 0, stderr
    assert rest == ""
    return child, reports


@pytest.mark.parametrize("mode", ["script", "relative script", "module", "launcher", "command", "interpreter options"])
def test_argv_kept_over_restarts(children, tmp_path, mode):
    """Three restarts, each after a chdir, keep sys.argv and the way the program was started.

    A -m program runs again in the directory it started in, which the
    interpreter puts first on sys.path; others keep the directory they moved to.
    """
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_environment({"RESTARTS_LEFT": "3", "CHDIR_TO": str(elsewhere)})
    if mode == "script":
        argv, cwd = [sys.executable, str(HELPERS / "restart_loop.py"), *ARGS], tmp_path
    elif mode == "relative script":
        argv, cwd = [sys.executable, os.path.join("helpers", "restart_loop.py"), *ARGS], HELPERS.parent
    elif mode == "module":
        argv, cwd = [sys.executable, "-m", "restartpkg", *ARGS], HELPERS
    elif mode == "launcher":
        argv, cwd = [write_launcher(tmp_path), *ARGS], tmp_path
        env["PYTHONPATH"] = str(HELPERS)
    elif mode == "command":
        argv, cwd = [sys.executable, "-c", "from restartpkg.loop import main; main()", *ARGS], tmp_path
        env["PYTHONPATH"] = str(HELPERS)
    else:
        options = ["-X", "utf8", "-W", "ignore", "-B"]
        argv, cwd = [sys.executable, *options, str(HELPERS / "restart_loop.py"), *ARGS], tmp_path

    child, reports = run_loop(children, argv, 3, env=env, cwd=cwd)

    # sys.argv[0] may become absolute, but must name the same file from the new cwd.
    first_script = os.path.join(cwd, reports[0]["argv"][0])
    start_again_in = cwd if mode == "module" else elsewhere
    for number, report in enumerate(reports):
        run_cwd = cwd if number == 0 else start_again_in
        assert report["pid"] == child.pid, number
        assert report["argv"][1:] == ARGS, number
        if mode == "command":
            assert report["argv"][0] == "-c", number
        else:
            assert os.path.samefile(os.path.join(run_cwd, report["argv"][0]), first_script), number
        assert report["restarts_left"] == 3 - number
    for report in reports[1:]:
        assert report["cwd"] == str(start_again_in)
        assert report["inherited"] == PASSED
    if mode == "module":
        assert all(report["orig_argv"][1:3] == ["-m", "restartpkg"] for report in reports)
    if mode == "launcher":
        assert all(report["argv"][0] == argv[0] for report in reports)
    if mode in ("command", "interpreter options"):
        options = argv[1:3] if mode == "command" else argv[1:6]
        for report in reports:
            assert report["orig_argv"][1 : 1 + len(options)] == options


def test_fds_exact_after_five_restarts(children, tmp_path):
    """After each of five restarts, /proc/self/fd lists stdio and the passed fds only."""
    env = clean_environment({"RESTARTS_LEFT": "5", "CHDIR_TO": str(tmp_path)})

    child, reports = run_loop(children, [sys.executable, str(HELPERS / "restart_loop.py")], 5, env=env)

    for number, report in enumerate(reports[1:], start=1):
        assert report["pid"] == child.pid, number
        assert report["fds"] == [0, 1, 2, 3, 4, 5], (number, report["fd_targets"])
        assert report["inherited"] == PASSED, number
        assert report["fd_targets"]["3"].startswith("socket:")
        assert report["fd_targets"]["5"].startswith("pipe:")
    assert len({report["fd_targets"]["3"] for report in reports[1:]}) == 1


def test_stdin_closed_at_start(children, tmp_path):
    """A program started with fd 0 closed restarts, and its passed fds do not land on 0."""
    env = clean_environment({"RESTARTS_LEFT": "2"})

    child, reports = run_loop(
        children, [sys.executable, str(HELPERS / "restart_loop.py")], 2, env=env, preexec_fn=lambda: os.close(0)
    )

    assert 0 not in reports[0]["fds"]
    for report in reports[1:]:
        assert report["pid"] == child.pid
        assert report["fds"] == [0, 1, 2, 3, 4, 5]
        assert report["fd_targets"]["0"] == "/dev/null"
        assert report["inherited"] == PASSED


def test_stdio_closed_at_start(children, tmp_path):
    """A program started with fds 0, 1 and 2 closed gets /dev/null there, and its sockets on 3 and up."""
    report_path = tmp_path / "reports.jsonl"
    env = clean_environment({"RESTARTS_LEFT": "2", "REPORT_PATH": str(report_path)})

    def close_stdio() -> None:
        for fd in (0, 1, 2):
            os.close(fd)

    child = children.start(
        [sys.executable, str(HELPERS / "restart_loop.py")], env=env, stdout=None, preexec_fn=close_stdio
    )
    status = child.wait()
    reports = [json.loads(line) for line in report_path.read_text().splitlines()]

    assert status == 0
    assert len(reports) == 3
    assert not {0, 1, 2} & set(reports[0]["fds"])
    for report in reports[1:]:
        assert report["fds"] == [0, 1, 2, 3, 4, 5]
        for fd in ("0", "1", "2"):
            assert report["fd_targets"][fd] == "/dev/null"
        assert report["inherited"] == PASSED


MODULE_AFTER_CHDIR_PROGRAM = """\
import json, os, sys
import fdpass
if os.environ.get("FDPASS_TEST_RUN") == "2":
    print(json.dumps({"cwd": os.getcwd(), "path0": sys.path[0], "json": json.__file__}), flush=True)
    sys.exit(0)
os.chdir("data")
os.environ["FDPASS_TEST_RUN"] = "2"
fdpass.reexec()
"""


@pytest.mark.parametrize("options", [[], ["-E"]], ids=["default", "ignore-environment"])
def test_module_after_chdir_imports_from_start(children, tmp_path, options):
    """A -m program that moved into a directory holding json.py runs again from its start directory.

    There a new run finds the program and the stdlib json, as the first run
    did, also under -E, which ignores PYTHONPATH.
    """
    (tmp_path / "chdirapp.py").write_text(MODULE_AFTER_CHDIR_PROGRAM)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "json.py").write_text("raise SystemExit('data/json.py shadowed the stdlib json')\n")
    child = children.start([sys.executable, *options, "-m", "chdirapp"], env=clean_environment(), cwd=tmp_path)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["cwd"] == str(tmp_path)
    assert report["path0"] == str(tmp_path)
    assert not report["json"].startswith(str(tmp_path))


MODULE_IN_REMOVED_DIRECTORY_PROGRAM = """\
import json, os, sys
import fdpass
if os.environ.get("FDPASS_TEST_RUN") == "2":
    print(json.dumps({"cwd": os.getcwd(), "pid": os.getpid()}), flush=True)
    sys.exit(0)
os.mkdir("removed")
os.chdir("removed")
os.rmdir(os.getcwd())
os.environ["FDPASS_TEST_RUN"] = "2"
fdpass.reexec()
"""


def test_module_in_removed_directory_restarts(children, tmp_path):
    """A -m program whose working directory was removed runs again in the directory it started in."""
    (tmp_path / "removedapp.py").write_text(MODULE_IN_REMOVED_DIRECTORY_PROGRAM)

    child = children.start([sys.executable, "-m", "removedapp"], env=clean_environment(), cwd=tmp_path)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report == {"cwd": str(tmp_path), "pid": child.pid}


SAFE_PATH_PROGRAM = """\
import json, os, sys
import fdpass
if os.environ.get("FDPASS_TEST_RUN") == "2":
    print(json.dumps({"cwd": os.getcwd()}), flush=True)
    sys.exit(0)
os.environ["FDPASS_TEST_RUN"] = "2"
fdpass.reexec()
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason="-P is new in Python 3.11")
def test_safe_path_module_stays_in_its_directory(children, tmp_path):
    """Under -P, sys.path[0] is a PYTHONPATH entry, not the start directory, so a new run starts where the first did."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "safepathapp.py").write_text(SAFE_PATH_PROGRAM)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    env = clean_environment({"PYTHONPATH": str(modules)})

    child = children.start([sys.executable, "-P", "-m", "safepathapp"], env=env, cwd=workdir)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["cwd"] == str(workdir)
