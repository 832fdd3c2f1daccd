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
from fdpass.restart import (
    AddressInUseByThisProcessError,
    Inherited,
    flush_output,
    inherit,
    inherited_state,
    listen,
    listeners,
    reexec,
)

# Upgrader and UpgradeError load fdpass.upgrade on first use (PEP 562), so a
# program that only restarts in place does not pay for importing it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from fdpass.upgrade import UpgradeError, Upgrader

_UPGRADE_NAMES = ("UpgradeError", "Upgrader")


def __getattr__(name: str) -> object:
    if name not in _UPGRADE_NAMES:
        raise AttributeError(f"module 'fdpass' has no attribute {name!r}")

    from fdpass import upgrade

    value = getattr(upgrade, name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AddressInUseByThisProcessError",
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
