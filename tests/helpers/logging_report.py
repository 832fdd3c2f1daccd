"""Run one fdpass action with the "fdpass" logger writing to stderr, for the logging tests.

Usage: logging_report.py restart|exec-fails|bad-env|stale-unix PATH

Every line on stdout comes from this file, so a test can check that the
library printed nothing.
"""

import logging
import os
import socket
import sys

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")

import fdpass  # noqa: E402

mode, path = sys.argv[1], sys.argv[2]

if mode == "restart":
    if "LISTEN_FDS" in os.environ:
        inherited = fdpass.inherit()
        print("second run adopted", list(inherited), flush=True)
    else:
        fdpass.listen(("127.0.0.1", 0), name="http")
        fdpass.listen(path, name="control")
        print("first run", flush=True)
        fdpass.reexec()
elif mode == "exec-fails":
    listener = fdpass.listen(("127.0.0.1", 0), name="http")
    try:
        fdpass.reexec(argv=[path], executable=path)
    except OSError as error:
        print("reexec raised", error.errno, flush=True)
elif mode == "bad-env":
    os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="only-one")
    try:
        fdpass.inherit()
    except ValueError:
        print("inherit raised", flush=True)
elif mode == "stale-unix":
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    fdpass.listen(path, name="control")
    print("bound", flush=True)
