"""Write output without flushing it, restart, and write more.

Usage: print_before_restart.py

The first run prints to stdout without flush, writes to stderr without a
newline, and logs through a MemoryHandler that buffers records for a stdout
handler, then calls fdpass.reexec(). stdout is a pipe, so print() is block
buffered. The new run prints one more line.
"""

import logging
import logging.handlers
import os
import sys

import fdpass


def main() -> None:
    fdpass.inherit()

    if "HELPER_RESTARTED" in os.environ:
        print("second run")
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

    fdpass.reexec(env={**os.environ, "HELPER_RESTARTED": "1"})


if __name__ == "__main__":
    main()
