"""Call fdpass.inherit() and report what it adopted, as one JSON line.

Usage: inherit_report.py [--open-first N] [--restart-first]

--open-first N opens N files before inherit(), so they take the lowest free
fds with FD_CLOEXEC set, as files a program opens itself do.
--restart-first makes the first run pass a socketpair end through
fdpass.reexec() under the name "restarted"; the new run reports.

The report lists the adopted fds, the LISTEN_* variables left in os.environ,
and the LISTEN_* lines that child processes see in their environment, both
through subprocess and through os.system().
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile

import fdpass


def describe(description: fdpass.Description, obj: object) -> dict[str, object]:
    return {
        "fd": description.fd,
        "name": description.name,
        "kind": description.kind,
        "family": description.family,
        "type": description.type,
        "object": type(obj).__name__,
        "object_fd": obj.fileno() if hasattr(obj, "fileno") else obj,
        "timeout": obj.gettimeout() if hasattr(obj, "gettimeout") else None,
    }


def listen_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("LISTEN_")]


def child_environments() -> dict[str, list[str]]:
    env_output = subprocess.run(["/usr/bin/env"], capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("r") as output:
        status = os.system(f"/usr/bin/env > {output.name}")
        system_output = output.read()
    return {
        "subprocess": listen_lines(env_output),
        "system": listen_lines(system_output) if status == 0 else [f"os.system status {status}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--open-first", type=int, default=0)
    parser.add_argument("--restart-first", action="store_true")
    options = parser.parse_args()

    listen_env_at_start = {key: value for key, value in os.environ.items() if key.startswith("LISTEN_")}
    opened = [open(os.devnull, "rb") for _ in range(options.open_first)]

    if options.restart_first and "HELPER_RESTARTED" not in os.environ:
        pair_end, _unpassed_end = socket.socketpair()
        fdpass.reexec({"restarted": pair_end}, env={**os.environ, "HELPER_RESTARTED": "1"})

    report: dict[str, object] = {
        "pid": os.getpid(),
        "opened_first": [f.fileno() for f in opened],
        "listen_env_at_start": listen_env_at_start,
    }
    try:
        inherited = fdpass.inherit()
    except Exception as error:
        report.update(error_type=type(error).__name__, message=str(error), adopted=[])
        try:
            fdpass.inherit()
        except Exception as again:
            report["second_error"] = [type(again).__name__, str(again)]
        else:
            report["second_error"] = None
    else:
        report["error_type"] = None
        report["adopted"] = [
            describe(d, obj) for d, obj in zip(inherited.descriptions, inherited.objects, strict=True)
        ]
        report["first_by_name"] = {name: inherited[name].fileno() for name in inherited}
        report["all_by_name"] = {name: [obj.fileno() for obj in inherited.getall(name)] for name in inherited}
        report["getall_missing"] = inherited.getall("no-such-name")
        try:
            inherited["no-such-name"]
        except KeyError:
            report["missing_name_raises"] = "KeyError"
        else:
            report["missing_name_raises"] = None
        again = fdpass.inherit()
        report["second_call_same"] = again is inherited and all(
            first is second for first, second in zip(inherited.objects, again.objects, strict=True)
        )

    report["listen_env_left"] = sorted(key for key in os.environ if key.startswith("LISTEN_"))
    report["child_env"] = child_environments()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
