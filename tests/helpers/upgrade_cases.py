"""Run one upgrade with fdpass.Upgrader and print its outcome as one JSON line.

Usage: upgrade_cases.py MODE CHILD [UPGRADE_TIMEOUT]

The first generation (this process as the test starts it) listens on
127.0.0.1 under the name "http", calls ready() and runs one upgrade, passing the write end of a
"probe" pipe to the new generation. MODE is how it runs the upgrade:

- "wait": upgrade(), until it returns or raises.
- "async": upgrade_async(), until it returns or raises.
- "cancel": upgrade_async(), cancelled once the new generation has written
  to the probe pipe.
- "interrupt": upgrade(), interrupted by SIGINT (KeyboardInterrupt) once the
  new generation has written to the probe pipe.
- "name-of-listener": upgrade() with another socket in fds under "http",
  the name of the listener.
- "listener-twice": upgrade() with the listener in fds under "admin".

The new generation (the same command line, started by upgrade()) does
what CHILD names, then writes one JSON line to the probe pipe:

- "hang": never calls ready().
- "ready": calls ready() and reports the names of the fds it inherited.
- "parent-timeouts": calls ready(), then wait_for_parent() with each
  timeout in BAD_TIMEOUTS and with 0, and reports what each returned or
  raised. Once the parent has exited, it prints {"event": "parent-gone"}
  to stdout, which it shares with the parent, after wait_for_parent(1e7).
- "stop": calls stop() before ready().
- "second": calls ready() and stop(), then ready() on a second Upgrader.
- "second-after-stop": keeps a copy of the readiness pipe open, so the
  parent keeps waiting, calls stop() before ready(), then ready() on a
  second Upgrader.

The first generation prints {"outcome", "error", "new_pid", "probe",
"reaped", "serving", "warnings", "info"}: the probe line, whether upgrade()
reaped the new generation, whether wait_exit(0) still returns False, and
the messages of the fdpass log records at WARNING or above and at INFO.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

import fdpass
from fdpass import upgrade

PROBE_TIMEOUT = 20.0

#: Timeouts that wait_for_parent() must reject, by their repr().
BAD_TIMEOUTS = ["'1'", "True", "float('nan')", "-1", "b'1'"]


def report(probe: int, **fields: object) -> None:
    os.write(probe, (json.dumps({"pid": os.getpid(), **fields}) + "\n").encode())


def run_new_generation(child: str) -> int:
    probe = fdpass.inherit()["probe"].fileno()
    upgrader = fdpass.Upgrader()

    if child == "ready":
        upgrader.ready()
        report(probe, step="ready", names=sorted(fdpass.inherit()))
        upgrader.wait_for_parent(PROBE_TIMEOUT)
        return 0
    if child == "parent-timeouts":
        upgrader.ready()
        results = {}
        for text in BAD_TIMEOUTS:
            try:
                results[text] = repr(upgrader.wait_for_parent(eval(text)))
            except Exception as error:
                results[text] = f"{type(error).__name__}: {error}"
        results["0"] = repr(upgrader.wait_for_parent(0))
        report(probe, step="parent-timeouts", results=results)
        parent_gone = upgrader.wait_for_parent(1e7)
        os.write(1, (json.dumps({"event": "parent-gone", "returned": parent_gone}) + "\n").encode())
        return 0
    if child == "stop":
        report(probe, step="stopping")
        upgrader.stop()
    elif child in ("second", "second-after-stop"):
        if child == "second":
            upgrader.ready()
        else:
            os.dup(fdpass.inherit()[upgrade.READY_FD_NAME].fileno())
        upgrader.stop()
        try:
            fdpass.Upgrader().ready()
        except Exception as error:
            report(probe, step="second ready", error=f"{type(error).__name__}: {error}")
        else:
            report(probe, step="second ready", error=None)
        if child == "second":
            upgrader.wait_for_parent(PROBE_TIMEOUT)
            return 0
    else:
        report(probe, step="hanging")

    time.sleep(PROBE_TIMEOUT)
    return 4


def wait_readable(fd: int) -> None:
    if not select.select([fd], [], [], PROBE_TIMEOUT)[0]:
        raise TimeoutError(f"the new generation wrote nothing to the probe pipe within {PROBE_TIMEOUT} s")


def read_probe(fd: int) -> dict | None:
    """Return the new generation's JSON line from the probe pipe, or None if it wrote none."""
    data = b""
    deadline = time.monotonic() + PROBE_TIMEOUT
    while b"\n" not in data and time.monotonic() < deadline:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data.partition(b"\n")[0]) if b"\n" in data else None


async def cancel_upgrade(upgrader: fdpass.Upgrader, probe_read: int, probe_write: int) -> None:
    loop = asyncio.get_running_loop()
    written: asyncio.Future[None] = loop.create_future()
    loop.add_reader(probe_read, lambda: written.done() or written.set_result(None))
    task = asyncio.ensure_future(upgrader.upgrade_async(fds={"probe": probe_write}))
    await asyncio.wait({written, task}, timeout=PROBE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    loop.remove_reader(probe_read)
    task.cancel()
    await task


def interrupt_when_probed(probe_read: int) -> None:
    wait_readable(probe_read)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def main() -> int:
    mode, child = sys.argv[1], sys.argv[2]
    if upgrade.PARENT_PID_VARIABLE in os.environ:
        return run_new_generation(child)

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("fdpass").addHandler(handler)
    logging.getLogger("fdpass").setLevel(logging.INFO)

    upgrade_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else PROBE_TIMEOUT
    upgrader = fdpass.Upgrader(upgrade_timeout=upgrade_timeout)
    listener = upgrader.listen(("127.0.0.1", 0), name="http")
    upgrader.ready()
    probe_read, probe_write = os.pipe()

    outcome, error, new_pid = "returned", None, None
    try:
        if mode == "async":
            new_pid = asyncio.run(upgrader.upgrade_async(fds={"probe": probe_write}))
        elif mode == "cancel":
            asyncio.run(cancel_upgrade(upgrader, probe_read, probe_write))
        elif mode == "name-of-listener":
            with socket.create_server(("127.0.0.1", 0)) as other:
                new_pid = upgrader.upgrade(fds={"probe": probe_write, "http": other})
        elif mode == "listener-twice":
            new_pid = upgrader.upgrade(fds={"probe": probe_write, "admin": listener})
        elif mode == "interrupt":
            threading.Thread(target=interrupt_when_probed, args=(probe_read,), daemon=True).start()
            new_pid = upgrader.upgrade(fds={"probe": probe_write})
        else:
            new_pid = upgrader.upgrade(fds={"probe": probe_write})
    except BaseException as caught:
        outcome, error = "raised", f"{type(caught).__name__}: {caught}"
        new_pid = getattr(caught, "pid", None)
    os.close(probe_write)

    probe = read_probe(probe_read)
    reaped = False
    if probe is not None:
        try:
            os.waitpid(probe["pid"], os.WNOHANG)
        except ChildProcessError:
            reaped = True
    serving = not upgrader.wait_exit(0)
    result = {"outcome": outcome, "error": error, "new_pid": new_pid, "probe": probe, "reaped": reaped}
    result["serving"] = serving
    warnings = [record.getMessage() for record in records if record.levelno >= logging.WARNING]
    info = [record.getMessage() for record in records if record.levelno == logging.INFO]
    print(json.dumps({**result, "warnings": warnings, "info": info}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
