"""Write output without flushing it, restart, and write more.

Usage: print_before_restart.py FILE_PATH

The first run prints to stdout without flush, writes to stderr without a
newline, logs through a MemoryHandler that buffers records for a stdout
handler, and writes to a buffered text file at FILE_PATH, then calls
fdpass.reexec() with that file. stdout is a pipe, so print() is block
buffered. The new run prints one more line and the file's contents.
"""

import logging
import logging.handlers
import os
import sys

import fdpass


def main() -> None:
    inherited = fdpass.inherit()

    if "HELPER_RESTARTED" in os.environ:
        print("second run")
        inherited["file"].close()
        with open(sys.argv[1]) as written:
            print(f"file: {written.read()!r}")
        return

    print("print before restart")
    sys.stderr.write("stderr before restart")
    target = logging.StreamHandler(sys.stdout)
    target.setFormatter(logging.Formatter("%(message)s"))
    buffered = logging.handlers.MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL, target=target)
    logger = logging.getLogger("app")
    logger.addHandler(buffered)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("log record before restart")
    print("print after log")

    passed_file = open(sys.argv[1], "w")
    passed_file.write("file line before restart\n")

    fdpass.reexec({"file": passed_file}, env={**os.environ, "HELPER_RESTARTED": "1"})


if __name__ == "__main__":
    main()
