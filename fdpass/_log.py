"""Log to the "fdpass" logger without importing logging at start-up.

Importing logging costs several milliseconds, which every restart would pay.
Until the program imports logging it cannot have configured it, so the root
logger's default level (WARNING) applies and a DEBUG or INFO record would be
dropped: such records are skipped. A WARNING or higher imports logging, so it
reaches logging's last-resort handler on stderr as before.
"""

from __future__ import annotations

import sys

DEBUG = 10
INFO = 20
WARNING = 30

# typing costs milliseconds to import, and mypy reads this name as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging


def logger(import_if_missing: bool = False) -> logging.Logger | None:
    """Return logging.getLogger("fdpass"), or None if logging is not imported and cannot be now."""
    if "logging" not in sys.modules and not import_if_missing:
        return None

    try:
        import logging as module
    except (ImportError, OSError):
        # Importing opens files and lists directories, which fails at the
        # RLIMIT_NOFILE limit (EMFILE). The record is dropped so that the
        # caller's own error, about to be raised, is not replaced.
        return None

    return module.getLogger("fdpass")


def enabled(level: int) -> bool:
    """Return True if a record at level would be handled, so its arguments are worth building."""
    log = logger(import_if_missing=level >= WARNING)
    return log is not None and log.isEnabledFor(level)


def log(level: int, message: str, *args: object) -> None:
    """Log message % args at level to the "fdpass" logger."""
    target = logger(import_if_missing=level >= WARNING)
    if target is not None:
        target.log(level, message, *args)


def debug(message: str, *args: object) -> None:
    log(DEBUG, message, *args)


def info(message: str, *args: object) -> None:
    log(INFO, message, *args)


def warning(message: str, *args: object) -> None:
    log(WARNING, message, *args)
