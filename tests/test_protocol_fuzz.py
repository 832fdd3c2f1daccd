"""Property tests of fdpass.protocol: LISTEN_* decoding and fd-name encoding.

Hypothesis generates environments that mix well-formed and malformed
LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES values. decode() must either raise
the documented ValueError or return fds inside 3 .. 3 + LISTEN_FDS - 1.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdpass import protocol

#: Enough cases to reach the rare branches, few enough to finish in seconds.
FUZZ_SETTINGS = settings(
    max_examples=3000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Every character systemd accepts in an fd name: printable ASCII except ':'.
NAME_ALPHABET = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != ":")

valid_names = st.text(alphabet=NAME_ALPHABET, max_size=protocol.MAX_NAME_LENGTH)

# Values that sit on the edges of what a decimal parser accepts.
TRICKY_NUMBERS = [
    "",
    "0",
    "00",
    "01",
    "+1",
    "-1",
    " 1",
    "1 ",
    "1\n",
    "0x3",
    "1e3",
    "1_000",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() is True
    "\u00b2",  # SUPERSCRIPT TWO: str.isdigit() is True
    "\uff11",  # FULLWIDTH DIGIT ONE
    str(protocol.MAX_FDS),
    str(protocol.MAX_FDS + 1),
    str(2**63 - 1),
    str(2**63),
    "9" * 5000,
    "0" * 5000 + "4",
]


def number_texts(likely: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    return st.one_of(
        likely.map(str),
        st.sampled_from(TRICKY_NUMBERS),
        st.text(alphabet=string.digits + "+- x\t", max_size=6),
        st.text(max_size=6),
    )


def names_texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(valid_names, max_size=12).map(":".join),
        st.lists(st.text(max_size=20), max_size=12).map(":".join),
        st.text(max_size=60),
    )


@st.composite
def environments(draw: st.DrawFn) -> tuple[dict[str, str], int]:
    pid = draw(st.integers(min_value=1, max_value=2**22))
    environ: dict[str, str] = {}

    if draw(st.booleans()):
        environ[protocol.LISTEN_PID] = draw(st.one_of(st.just(str(pid)), number_texts(st.integers(0, 2**22))))
    if draw(st.booleans()):
        environ[protocol.LISTEN_FDS] = draw(number_texts(st.integers(0, 40)))
    if draw(st.booleans()):
        environ[protocol.LISTEN_FDNAMES] = draw(names_texts())
    if draw(st.booleans()):
        environ[protocol.LISTEN_PIDFDID] = draw(st.text(max_size=10))
    environ.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3)))

    return environ, pid


def is_plain_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


def canonical_decimal(text: str) -> str:
    # Compared as strings: int() rejects more than 4300 digits.
    return text.lstrip("0") or "0"


@FUZZ_SETTINGS
@given(environments())
def test_decode_returns_only_declared_fds(case):
    """decode() raises only ValueError and returns only fds in 3 .. 3 + LISTEN_FDS - 1."""
    environ, pid = case

    try:
        result = protocol.decode(environ, pid)
    except ValueError as error:
        assert any(variable in str(error) for variable in protocol.VARIABLES), str(error)
        return

    assert len(result.names) == len(result.fds)
    if not result.fds:
        return
    pid_text = environ[protocol.LISTEN_PID]
    count_text = environ[protocol.LISTEN_FDS]
    assert is_plain_decimal(pid_text)
    assert canonical_decimal(pid_text) == str(pid)
    assert is_plain_decimal(count_text)
    assert result.fds == tuple(range(protocol.FIRST_FD, protocol.FIRST_FD + int(canonical_decimal(count_text))))


@FUZZ_SETTINGS
@given(environments())
def test_decode_ignores_other_processes(case):
    """An environment meant for another PID decodes to no fds, whatever else it contains."""
    environ, pid = case
    other_pid = pid + 1
    pid_text = environ.get(protocol.LISTEN_PID, "")
    if is_plain_decimal(pid_text) and canonical_decimal(pid_text) == str(other_pid):
        return

    try:
        result = protocol.decode(environ, other_pid)
    except ValueError:
        return

    assert result.fds == ()
    assert result.names == ()


@FUZZ_SETTINGS
@given(st.lists(valid_names, max_size=20), st.integers(min_value=1, max_value=2**31))
def test_encode_decode_round_trip(names, pid):
    """Names that validate_name() accepts come back unchanged and in order from decode()."""
    environ = protocol.encode(names, pid)

    result = protocol.decode(environ, pid)

    assert result.names == tuple(names)
    assert result.fds == tuple(range(protocol.FIRST_FD, protocol.FIRST_FD + len(names)))


@FUZZ_SETTINGS
@given(st.text(max_size=300))
def test_validate_name_accepts_exactly_systemd_names(name):
    """validate_name() returns a name systemd accepts unchanged and raises ValueError for any other."""
    acceptable = len(name) <= protocol.MAX_NAME_LENGTH and all(char in NAME_ALPHABET for char in name)

    try:
        checked = protocol.validate_name(name)
    except ValueError:
        assert not acceptable
        return

    assert acceptable
    assert checked == name


@FUZZ_SETTINGS
@given(st.lists(st.text(max_size=30), min_size=1, max_size=6), st.integers(min_value=-5, max_value=2**31))
def test_encode_rejects_invalid_input(names, pid):
    """encode() either raises ValueError or returns variables that decode() reads back exactly."""
    try:
        environ = protocol.encode(names, pid)
    except ValueError:
        invalid_name = any(
            len(name) > protocol.MAX_NAME_LENGTH or any(char not in NAME_ALPHABET for char in name) for name in names
        )
        assert invalid_name or pid <= 0
        return

    assert pid > 0
    assert protocol.decode(environ, pid).names == tuple(names)


@settings(max_examples=200, deadline=None, database=None)
@given(st.one_of(st.integers(), st.binary(max_size=5), st.none(), st.lists(st.text(max_size=3), max_size=2)))
def test_validate_name_rejects_non_strings(name):
    """validate_name() raises TypeError, naming the type, for anything but a str."""
    try:
        protocol.validate_name(name)
    except TypeError as error:
        assert type(name).__name__ in str(error)
    else:
        raise AssertionError(f"validate_name({name!r}) accepted a {type(name).__name__}")
