"""Pass a state blob larger than the environment could hold through reexec(), and report it.

The first run calls fdpass.reexec(state=...) with SIZE bytes. The second run
prints one JSON line with the PID, the length and SHA-256 of
fdpass.inherited_state(), whether a second call returns the same bytes, and
the inherited fd names.
"""

import hashlib
import json
import os
import sys

import fdpass

SIZE = 3 * 1024 * 1024

if os.environ.get("REEXEC_STATE_ROUND") != "2":
    os.environ["REEXEC_STATE_ROUND"] = "2"
    blob = bytes(index % 251 for index in range(SIZE))
    print(json.dumps({"pid": os.getpid(), "sha256": hashlib.sha256(blob).hexdigest()}), flush=True)
    fdpass.reexec(state=blob)

state = fdpass.inherited_state()
again = fdpass.inherited_state()
print(
    json.dumps(
        {
            "pid": os.getpid(),
            "length": None if state is None else len(state),
            "sha256": None if state is None else hashlib.sha256(state).hexdigest(),
            "same_again": again is state,
            "names": list(fdpass.inherit()),
        }
    ),
    flush=True,
)
sys.exit(0)
