"""Pass pipe read ends from chosen fd numbers in a chosen order, and report where they land.

Usage: permute_fds.py SPEC_JSON

SPEC_JSON is {"placements": {fd: marker}, "order": [fd, ...], "unpassed": [fd, ...]}.
The first run puts the read end of a pipe holding MARKER on each fd of
placements (fd 0 included), a /dev/null on each fd of unpassed, and calls
fdpass.reexec() with the fds of order, as ints. The new run prints, in fd
order, each adopted fd and the marker read from it, and its open fds.
"""

import fcntl
import json
import os
import sys

import fdpass


def place(spec: dict) -> None:
    # Make every pipe first, above every target, so placing one cannot
    # overwrite another.
    staged = {}
    for fd_text, marker in spec["placements"].items():
        read_end, write_end = os.pipe()
        os.write(write_end, marker.encode())
        os.close(write_end)
        staged[int(fd_text)] = fcntl.fcntl(read_end, fcntl.F_DUPFD_CLOEXEC, 200)
        os.close(read_end)
    for fd in spec["unpassed"]:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        staged[fd] = fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, 200)
        os.close(null)

    for fd, source in staged.items():
        os.dup2(source, fd, inheritable=False)
        os.close(source)


def open_fds() -> dict[int, str]:
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
    return dict(sorted(fds.items()))


def main() -> None:
    spec = json.loads(sys.argv[1])
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" not in os.environ:
        place(spec)
        fdpass.reexec(spec["order"], env={**os.environ, "HELPER_RESTARTED": "1"})

    landed = [[d.fd, obj.read().decode()] for d, obj in zip(inherited.descriptions, inherited.objects, strict=True)]
    targets = open_fds()
    print(json.dumps({"landed": landed, "open_fds": list(targets), "stdin": targets.get(0)}), flush=True)


if __name__ == "__main__":
    main()
