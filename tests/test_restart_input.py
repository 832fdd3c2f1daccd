"""reexec() rejects bad input with an error that names the item, before anything changes."""

from __future__ import annotations

import errno

import pytest

#: label -> (exception types allowed, text the message must contain, or a tuple of such texts).
CASES = {
    "closed socket": (("ValueError", "OSError"), "fds[1]"),
    "closed file": (("ValueError", "OSError"), "'bad'"),
    "closed int": (("ValueError", "OSError"), "fds[1]"),
    "negative int": (("ValueError", "OSError"), "fds[0]"),
    "huge int": (("ValueError", "OSError"), "fds[1]"),
    "fd above limit": (("ValueError", "OSError"), "fds[1]"),
    "socket twice": (("ValueError",), ("fds[1]", "which fds[0]")),
    "socket and its int": (("ValueError",), ("fds[2]", "which fds[0]")),
    "twice by name": (("ValueError",), "'b'"),
    "name with colon": (("ValueError",), "'a:b'"),
    "name with newline": (("ValueError",), "'a\\nb'"),
    "name with NUL": (("ValueError",), "'a\\x00b'"),
    "name with non-ASCII": (("ValueError",), "'café'"),
    "name too long": (("ValueError",), "256"),
    "name not str": (("TypeError",), "5"),
    "fds is str": (("TypeError",), "str"),
    "fds is int": (("TypeError",), "int"),
    "item is float": (("TypeError",), "fds[1]"),
    "item is None": (("TypeError",), "fds[0]"),
    "item is bool": (("TypeError",), "fds[0]"),
    "item is str": (("TypeError",), "'web'"),
    "argv empty": (("ValueError",), "argv"),
    "argv with NUL": (("ValueError",), "argv[1]"),
    "env value not str": (("TypeError",), "'A'"),
    "env is list": (("TypeError",), "env"),
    "env is str": (("TypeError",), "env"),
    "executable with NUL": (("ValueError",), "executable"),
    "executable is int": (("TypeError",), "executable"),
    "reserved state name": (("ValueError",), "'fdpass-state'"),
    "closed int with state": (("OSError",), "fds[1]"),
    "reserved upgrade name": (("ValueError",), "'fdpass-ready'"),
    "env name empty": (("ValueError",), "variable name ''"),
    "env value with NUL": (("ValueError",), "'A' has the value 'x\\x00y'"),
}


@pytest.fixture(scope="module")
def results(module_children):
    child = module_children.helper("bad_input.py")
    reported = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    return reported


@pytest.mark.parametrize("label", list(CASES))
def test_bad_input_rejected(results, label):
    allowed_types, named = CASES[label]
    result = results[label]

    assert result["type"] in allowed_types, result
    for text in (named,) if isinstance(named, str) else named:
        assert text in result["message"], result
    assert result["state_kept"] is True


def test_name_of_255_characters_accepted(results):
    """A 255-character name passes validation, so only the exec fails."""
    assert results["name of 255 characters"]["type"] == "FileNotFoundError"


def test_program_from_stdin_not_rerun(children):
    """A program read from standard input gets ValueError, because a re-run would read nothing."""
    child = children.python_stdin(
        b"import fdpass\n"
        b"try:\n"
        b"    fdpass.reexec([])\n"
        b"except ValueError as error:\n"
        b"    print('ValueError', error, flush=True)\n"
    )

    line = child.readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert line.startswith("ValueError")
    assert "argv=" in line


def test_emfile_message_names_limit(children):
    """An exec that runs out of fd slots raises EMFILE saying how many free fds it needs."""
    # Ten /dev/null fds push the sockets above their targets 3..82, so each
    # move needs a spare copy, and 90 open fds plus 80 copies exceed 120.
    code = (
        "import os, resource, socket, sys, fdpass\n"
        "if os.environ.get('EMFILE_TEST_RAN'):\n"
        "    print('executed', flush=True)\n"
        "    sys.exit(3)\n"
        "os.environ['EMFILE_TEST_RAN'] = '1'\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (120, hard))\n"
        "placeholders = [os.open(os.devnull, os.O_RDONLY) for _ in range(10)]\n"
        "socks = [socket.socket() for _ in range(80)]\n"
        "try:\n"
        "    fdpass.reexec(socks)\n"
        "except OSError as error:\n"
        "    print(error.errno, error, flush=True)\n"
        "    socks[0].bind(('127.0.0.1', 0))\n"
        "    print('still usable', flush=True)\n"
    )
    child = children.python("-c", code)

    line = child.readline()
    usable = child.readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert line.startswith(f"{errno.EMFILE} ")
    assert "needs up to 80 free fds" in line
    assert usable == "still usable"


def test_state_fd_near_limit_names_state(children):
    """state= with the highest allowed fd passed raises OSError that names state= and RLIMIT_NOFILE."""
    code = (
        "import os, resource, socket, fdpass\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "listener = socket.create_server(('127.0.0.1', 0))\n"
        "top = os.dup2(listener.fileno(), 63)\n"
        "try:\n"
        "    fdpass.reexec([top], state=b'sessions')\n"
        "except OSError as error:\n"
        "    print(error, flush=True)\n"
    )
    child = children.python("-c", code)

    line = child.readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert "state=" in line
    assert "RLIMIT_NOFILE soft limit of 64" in line


def test_failed_flush_closes_state_fd(children):
    """A passed object whose flush() raises ends reexec() with that error, and the state memfd is closed."""
    code = (
        "import json, os, socket, fdpass\n"
        "class Failing:\n"
        "    def __init__(self, sock): self.sock = sock\n"
        "    def fileno(self): return self.sock.fileno()\n"
        "    def flush(self): raise RuntimeError('flush failed')\n"
        "listener = socket.create_server(('127.0.0.1', 0))\n"
        "errors = []\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        fdpass.reexec({'http': Failing(listener)}, state=b'x' * 1000)\n"
        "    except RuntimeError as error:\n"
        "        errors.append(str(error))\n"
        "targets = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        targets.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
        "    except FileNotFoundError:\n"
        "        pass  # the fd that listdir() used\n"
        "memfds = [target for target in targets if target.startswith('/memfd:')]\n"
        "print(json.dumps({'errors': errors, 'memfds': memfds}), flush=True)\n"
    )
    child = children.python("-c", code)

    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["errors"] == ["flush failed"] * 3
    assert report["memfds"] == []


def test_deleted_script_not_rerun(children, tmp_path):
    """reexec() of a script that was deleted raises FileNotFoundError naming it, and the program keeps running."""
    script = tmp_path / "deleted_program.py"
    script.write_text(
        "import os, sys, fdpass\n"
        "os.unlink(sys.argv[0])\n"
        "try:\n"
        "    fdpass.reexec()\n"
        "except FileNotFoundError as error:\n"
        "    print(error.filename, error.strerror, flush=True)\n"
    )
    child = children.python(script)

    line = child.readline()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert line.startswith(f"{script} the program file no longer exists"), line
