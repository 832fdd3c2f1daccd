"""Parsing of ``fdpass run --listen [NAME=]ADDRESS`` values."""

from __future__ import annotations

import socket

import pytest

from fdpass import cliaddress

VALID = [
    ("127.0.0.1:8000", "unknown", ("127.0.0.1", 8000), socket.SOCK_STREAM),
    ("web=127.0.0.1:0", "web", ("127.0.0.1", 0), socket.SOCK_STREAM),
    ("localhost:80", "unknown", ("localhost", 80), socket.SOCK_STREAM),
    ("[::1]:8443", "unknown", ("::1", 8443), socket.SOCK_STREAM),
    ("[fe80::1%lo]:80", "unknown", ("fe80::1%lo", 80), socket.SOCK_STREAM),
    ("tcp:0.0.0.0:1", "unknown", ("0.0.0.0", 1), socket.SOCK_STREAM),
    ("dns=udp:127.0.0.1:53", "dns", ("127.0.0.1", 53), socket.SOCK_DGRAM),
    ("udp:[::]:5353", "unknown", ("::", 5353), socket.SOCK_DGRAM),
    ("unix:/run/app.sock", "unknown", "/run/app.sock", socket.SOCK_STREAM),
    ("unix:/run/a=b.sock", "unknown", "/run/a=b.sock", socket.SOCK_STREAM),
    ("api=unix:relative.sock", "api", "relative.sock", socket.SOCK_STREAM),
    ("unix-stream:/x", "unknown", "/x", socket.SOCK_STREAM),
    ("unix-dgram:/run/log.sock", "unknown", "/run/log.sock", socket.SOCK_DGRAM),
    ("unix-seqpacket:/run/sp", "unknown", "/run/sp", socket.SOCK_SEQPACKET),
    ("unix:@control", "unknown", "\0control", socket.SOCK_STREAM),
    ("ctl=unix-dgram:@ctl", "ctl", "\0ctl", socket.SOCK_DGRAM),
]


@pytest.mark.parametrize("text, name, address, sock_type", VALID)
def test_parse_valid(text, name, address, sock_type):
    """Each documented spelling parses to the name, address and socket type it stands for."""
    spec = cliaddress.parse(text)

    assert spec.name == name
    assert spec.address == address
    assert spec.type == sock_type
    assert spec.text == text


INVALID = [
    ("8000", "missing host; write 127.0.0.1:8000"),
    ("sctp:127.0.0.1:80", "'sctp:' is not a known address prefix"),
    ("UDP:127.0.0.1:53", "'UDP:' is not a known address prefix"),
    ("http://127.0.0.1:80", "'http:' is not a known address prefix"),
    ("tcp6:[::1]:80", "'tcp6:' is not a known address prefix"),
    ("fe80::1:80", "needs brackets"),
    ("127.0.0.1", "missing port"),
    ("127.0.0.1:http", "not a port number"),
    ("127.0.0.1:65536", "out of range"),
    ("127.0.0.1:-1", "not a port number"),
    (":8000", "missing host"),
    ("::1:80", "needs brackets"),
    ("[::1:80", "no matching ']'"),
    ("[::1]", "missing port"),
    ("[localhost]:80", "not an IPv6 address"),
    ("udp:", "not an address"),
    ("/run/app.sock", "not an address"),
    ("unix:", "missing path"),
    ("unix:@", "abstract name after '@' is empty"),
    ("a:b=127.0.0.1:0", "cannot contain ':'"),
    ("=127.0.0.1:80", "name before '=' is empty"),
    ("b\x01d=127.0.0.1:80", "printable ASCII"),
]


@pytest.mark.parametrize("text, expected", INVALID)
def test_parse_invalid(text, expected):
    """A malformed value raises ValueError that quotes it and says what is wrong."""
    with pytest.raises(ValueError) as info:
        cliaddress.parse(text)

    assert repr(text) in str(info.value)
    assert expected in str(info.value)


def test_resolve_uses_addresses_module():
    """A parsed spec resolves to the sockaddr that listen() binds."""
    target = cliaddress.parse("udp:[::1]:0").resolve()

    assert target.family == socket.AF_INET6
    assert target.type == socket.SOCK_DGRAM
    assert target.sockaddr[:2] == ("::1", 0)
