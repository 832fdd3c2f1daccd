"""reexec() rejects bad input with an error that names the item, before anything changes."""

from __future__ import annotations

import pytest

#: label -> (exception types allowed, text the message must contain).
CASES = {
    "closed socket": (("ValueError", "OSError"), "fds[1]"),
    "closed file": (("ValueError", "OSError"), "'bad'"),
    "closed int": (("ValueError", "OSError"), "fds[1]"),
    "negative int": (("ValueError", "OSError"), "fds[0]"),
    "huge int": (("ValueError", "OSError"), "fds[1]"),
    "fd above limit": (("ValueError", "OSError"), "fds[1]"),
    "socket twice": (("ValueError",), "fds[1]"),
    "socket and its int": (("ValueError",), "fds[2]"),
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
    assert named in result["message"]
    assert result["state_kept"] is True


def test_name_of_255_characters_accepted(results):
    """A 255-character name passes validation, so only the exec fails."""
    assert results["name of 255 characters"]["type"] == "FileNotFoundError"
