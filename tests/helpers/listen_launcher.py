"""Start a program the way a service manager does: fds on 3, 4, ... and LISTEN_* set.

Usage: listen_launcher.py CONFIG_JSON COMMAND...

CONFIG_JSON is an object with:
- "layout": {target fd: source fd}, where each source fd was passed to this
  process (subprocess's pass_fds); each target must not be a source;
- "env": variables to set, where the value "$PID" becomes this PID, which
  exec keeps, and None removes the variable.

The launcher moves the fds, sets the environment and executes COMMAND.
"""

import fcntl
import json
import os
import sys


def main() -> None:
    config = json.loads(sys.argv[1])
    command = sys.argv[2:]

    # Copy every source above every target first, so overlapping numbers
    # cannot overwrite one another.
    high_copies = {
        int(target): fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 100) for target, source in config["layout"].items()
    }
    for source in config["layout"].values():
        os.close(source)
    for target, copy in high_copies.items():
        os.dup2(copy, target, inheritable=True)
        os.close(copy)

    for key, value in config["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value.replace("$PID", str(os.getpid()))

    os.execv(command[0], command)


if __name__ == "__main__":
    main()
