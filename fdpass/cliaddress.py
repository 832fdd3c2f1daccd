"""Parse the ``--listen [NAME=]ADDRESS`` values of ``fdpass run``.

The spellings, one per socket kind:

=============================  ==========================================
``HOST:PORT``                  TCP; HOST is an IPv4 address or a host name
``[IPV6]:PORT``                TCP over IPv6, with an optional ``%SCOPE``
``tcp:HOST:PORT``              TCP, spelled out
``udp:HOST:PORT``              UDP; ``udp:[IPV6]:PORT`` for IPv6
``unix:/PATH``                 Unix stream socket on a file system path
``unix-dgram:/PATH``           Unix datagram socket
``unix-seqpacket:/PATH``       Unix seqpacket socket
``unix:@NAME``                 Linux abstract Unix socket (any of the three)
=============================  ==========================================

PORT 0 asks the kernel for a free port. A NAME is the LISTEN_FDNAMES entry
the socket is passed under; without one the socket is named "unknown", as
systemd names an fd with no FileDescriptorName=.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from fdpass import protocol
from fdpass.addresses import Address, Target, resolve

_UNIX_PREFIXES = {
    "unix:": socket.SOCK_STREAM,
    "unix-stream:": socket.SOCK_STREAM,
    "unix-dgram:": socket.SOCK_DGRAM,
    "unix-seqpacket:": socket.SOCK_SEQPACKET,
}

_INET_PREFIXES = {
    "tcp:": socket.SOCK_STREAM,
    "udp:": socket.SOCK_DGRAM,
}

#: One line per spelling, for error messages and --help.
FORMS = (
    "HOST:PORT, [IPV6]:PORT, tcp:HOST:PORT, udp:HOST:PORT, udp:[IPV6]:PORT, "
    "unix:/PATH, unix-dgram:/PATH, unix-seqpacket:/PATH, or unix:@ABSTRACT"
)


@dataclass(frozen=True)
class ListenSpec:
    """One parsed --listen value: the fd name, the address for listen() and the socket type."""

    text: str
    name: str
    address: Address
    type: int
    # False when the value had no NAME= and name is the default "unknown".
    named: bool = True

    def resolve(self) -> Target:
        """Return the addresses.Target for this spec; resolves a host name."""
        return resolve(self.address, self.type)


def _split_name(text: str) -> tuple[str | None, str]:
    # "web=127.0.0.1:80" has a name; "unix:/run/a=b" does not, because no
    # name contains ':' and every address form has one before any '='.
    head, sep, rest = text.partition("=")
    if not sep or ":" in head:
        return None, text
    return head, rest


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{text!r}: port {port_text!r} is not a port number; expected an integer from 0 to 65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{text!r}: port {port} is out of range; expected 0 to 65535")
    return port


def _parse_inet(text: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: '[' has no matching ']'; write an IPv6 address as [::1]:PORT")
        try:
            socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        except OSError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address; only IPv6 goes in brackets") from None
        if not tail.startswith(":"):
            raise ValueError(f"{text!r}: missing port; write [{host}]:PORT")
        return host, _parse_port(text, tail[1:])

    host, colon, port_text = rest.rpartition(":")
    if not colon and rest.isascii() and rest.isdigit():
        # A bare port such as 8000 lacks the host, not the port.
        port_text = rest
    elif not colon:
        raise ValueError(f"{text!r}: missing port; expected {FORMS}")
    if "=" in host:
        raise ValueError(
            f"{text!r}: {text.partition('=')[0]!r} before '=' is not a valid name, because a name "
            "cannot contain ':'; write NAME=ADDRESS"
        )
    if ":" in host:
        prefix = host.partition(":")[0]
        if _is_unknown_prefix(prefix, host):
            raise ValueError(f"{text!r}: {prefix + ':'!r} is not a known address prefix; expected {FORMS}")
        raise ValueError(f"{text!r}: an IPv6 address needs brackets, as in [{host}]:{port_text}")
    if not host:
        raise ValueError(
            f"{text!r}: missing host; write 127.0.0.1:{port_text} for loopback, 0.0.0.0:{port_text} for "
            f"every IPv4 address or [::]:{port_text} for every IPv6 address"
        )
    return host, _parse_port(text, port_text)


def _is_unknown_prefix(prefix: str, host: str) -> bool:
    """Return whether prefix, the text before the first ':' of host, reads as a scheme such as "sctp", not IPv6."""
    if not prefix or not prefix.isascii() or not prefix[0].isalpha():
        return False
    if not all(char.isalnum() or char in "+-." for char in prefix):
        return False
    try:
        socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return True
    return False


def _parse_unix(text: str, rest: str) -> str:
    if not rest:
        raise ValueError(f"{text!r}: missing path; write unix:/PATH or unix:@ABSTRACT")
    if "\0" in rest:
        raise ValueError(f"{text!r}: the path contains NUL; write an abstract name as unix:@NAME")
    if rest == "@":
        raise ValueError(f"{text!r}: the abstract name after '@' is empty; write unix:@NAME")
    if rest.startswith("@"):
        return "\0" + rest[1:]
    return rest


def parse(text: str) -> ListenSpec:
    """Parse one --listen value.

    Raises:
        ValueError: the value matches none of the forms above, its port is
            not 0 to 65535, or its name is not a valid LISTEN_FDNAMES entry.
            The message quotes the value and lists the expected forms.
    """
    name, address_text = _split_name(text)
    if name is not None:
        try:
            protocol.validate_name(name)
        except ValueError as error:
            raise ValueError(f"{text!r}: {error}") from None
        if not name:
            raise ValueError(f"{text!r}: the name before '=' is empty; write NAME=ADDRESS or ADDRESS")

    sock_type: int | None = None
    address: Address
    for prefix, unix_type in _UNIX_PREFIXES.items():
        if address_text.startswith(prefix):
            sock_type = unix_type
            address = _parse_unix(text, address_text[len(prefix):])
            break
    else:
        rest = address_text
        sock_type = socket.SOCK_STREAM
        for prefix, inet_type in _INET_PREFIXES.items():
            if address_text.startswith(prefix):
                sock_type = inet_type
                rest = address_text[len(prefix):]
                break
        if not rest or rest.startswith("/") or rest.startswith("@"):
            raise ValueError(f"{text!r} is not an address; expected {FORMS}")
        address = _parse_inet(text, rest)

    return ListenSpec(text, name or protocol.DEFAULT_NAME, address, sock_type, named=name is not None)


def format_bound(sock: socket.socket) -> str:
    """Return the address sock is bound to, in the --listen spelling, such as udp:[::1]:5353."""
    bound = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        prefix = {socket.SOCK_DGRAM: "unix-dgram:", socket.SOCK_SEQPACKET: "unix-seqpacket:"}.get(sock.type, "unix:")
        name = os.fsdecode(bound) if isinstance(bound, (str, bytes)) else ""
        return prefix + ("@" + name[1:] if name.startswith("\0") else name)

    host, port = bound[0], bound[1]
    host_text = f"[{host}]" if sock.family == socket.AF_INET6 else host
    return f"{'udp:' if sock.type == socket.SOCK_DGRAM else ''}{host_text}:{port}"
