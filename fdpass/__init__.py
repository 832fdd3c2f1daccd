"""fdpass: restart and upgrade Linux programs in place without dropping their sockets.

reexec() replaces the running program with a fresh run of itself in the same
process, passing the chosen fds through the systemd socket-activation
protocol. inherit() in the new run returns them as socket and file objects,
and listen() returns an inherited socket or binds a new one.
"""

import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"fdpass supports only Linux, not {sys.platform}: it relies on /proc/self/fd, "
        "SO_DOMAIN/SO_PROTOCOL and Linux execve semantics"
    )

from fdpass.protocol import ListenEnv
from fdpass.rebuild import Description
from fdpass.restart import Inherited, flush_output, inherit, inherited_state, listen, listeners, reexec
from fdpass.upgrade import UpgradeError, Upgrader

__version__ = "0.1.0"

__all__ = [
    "Description",
    "Inherited",
    "ListenEnv",
    "UpgradeError",
    "Upgrader",
    "flush_output",
    "inherit",
    "inherited_state",
    "listen",
    "listeners",
    "reexec",
]
