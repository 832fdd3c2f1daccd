"""Call fdpass.listen() for each case, restart, call it again, and report both runs.

Usage: listen_cases.py CASES_JSON [--restart]

CASES_JSON is a list of [label, address, type name, socket name]. An address
is [host, port] for TCP or UDP, a path string for a Unix socket, or
{"abstract": NAME} for a Linux abstract name. The first run calls listen()
for every case and prints one JSON report. With --restart it then calls
fdpass.reexec() with no fds, which passes every socket listen() returned.
The new run calls listen() again, with each original address and with the
address the first run bound, and reports whether the inherited socket came
back.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import fdpass

TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}


def decode_address(address: object) -> object:
    if isinstance(address, list):
        return tuple(address)
    if isinstance(address, dict):
        return "\0" + address["abstract"]
    return address


def encode_address(address: object) -> object:
    if isinstance(address, bytes):
        return {"abstract": address[1:].decode()} if address.startswith(b"\0") else address.decode()
    if isinstance(address, tuple):
        return list(address[:2])
    return address


def call_listen(address: object, type_name: str, name: str | None) -> dict[str, object]:
    try:
        sock = fdpass.listen(decode_address(address), type=TYPES[type_name], name=name)
    except Exception as error:
        return {
            "error_type": type(error).__name__,
            "errno": getattr(error, "errno", None),
            "message": str(error),
        }
    return {
        "error_type": None,
        "fd": sock.fileno(),
        "family": int(sock.family),
        "type": int(sock.type),
        "sockname": encode_address(sock.getsockname()),
        "listening": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
        # Port 0 without a name requests a new socket on each call, so repeat the name.
        "same_on_second_call": fdpass.listen(decode_address(address), type=TYPES[type_name], name=name) is sock,
        "_object": sock,
    }


def public(result: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in result.items() if not key.startswith("_")}


def main() -> None:
    cases = json.loads(sys.argv[1])
    restart = "--restart" in sys.argv[2:]
    inherited = fdpass.inherit()

    if "LISTEN_CASES_FIRST" not in os.environ:
        results = {label: call_listen(address, type_name, name) for label, address, type_name, name in cases}
        report = {label: public(result) for label, result in results.items()}
        print(json.dumps({"run": "first", "pid": os.getpid(), "cases": report}), flush=True)
        if restart:
            names = sorted(name for name, _ in fdpass.listeners())
            print(json.dumps({"registered": names}), flush=True)
            fdpass.reexec(env={**os.environ, "LISTEN_CASES_FIRST": json.dumps(report)})
        return

    first = json.loads(os.environ["LISTEN_CASES_FIRST"])
    adopted = set(map(id, inherited.objects))
    report = {}
    for label, address, type_name, _ in cases:
        again = call_listen(address, type_name, None)
        bound = call_listen(first[label]["sockname"], type_name, None) if first[label]["error_type"] is None else {}
        report[label] = {
            "original_address": public(again),
            "bound_address": public(bound),
            "inherited": again.get("_object") is not None and id(again["_object"]) in adopted,
            "bound_is_same": bound.get("_object") is not None and bound.get("_object") is again.get("_object"),
        }
    names = [d.name for d in inherited.descriptions]
    print(json.dumps({"run": "second", "pid": os.getpid(), "names": names, "cases": report}), flush=True)


if __name__ == "__main__":
    main()
