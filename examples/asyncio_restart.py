"""An asyncio HTTP server that restarts in place on SIGHUP and refuses no connection.

Run it, send it SIGHUP, and it runs again with the code now on disk, in the
same process, on the same listening socket:

    python examples/asyncio_restart.py 8000 &
    curl http://127.0.0.1:8000/        # 12345.1
    kill -HUP %1
    curl http://127.0.0.1:8000/        # 12345.2: same PID, second run

Each response body is "PID.RUN". SIGTERM stops the server once every open
connection has its response.
"""

import asyncio
import os
import signal
import sys

import fdpass

RUN = int(os.environ.get("EXAMPLE_RUN", "1"))
BODY = f"{os.getpid()}.{RUN}\n".encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)

handlers: set[asyncio.Task] = set()


async def handle(reader, writer):
    handlers.add(asyncio.current_task())
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
    finally:
        writer.close()
        handlers.discard(asyncio.current_task())


async def serve(listener):
    """Serve until SIGHUP or SIGTERM; return "restart" or "exit" once every open connection has its response."""
    loop = asyncio.get_running_loop()

    # Server.close() closes the socket it serves, so asyncio gets a copy and
    # the listener itself stays open for the next run.
    serving = listener.dup()
    server = await asyncio.start_server(handle, sock=serving)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGHUP, lambda: stop.done() or stop.set_result("restart"))
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result("exit"))
    print(f"run {RUN}: PID {os.getpid()} serving on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    action = await stop

    # asyncio attaches a connection accepted in this loop iteration to the
    # server one iteration later, and Server.close() would drop it. So stop
    # accepting first, let those connections reach their handlers, then close.
    loop.remove_reader(serving.fileno())
    for _ in range(3):
        await asyncio.sleep(0)
    server.close()
    if handlers:
        await asyncio.wait(handlers, timeout=10)
    return action


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
# The first run binds; every later run gets the same socket back from reexec().
listener = fdpass.listen(("127.0.0.1", port), name="http")
if asyncio.run(serve(listener)) == "restart":
    # New connections wait in the listener's accept queue during the exec.
    # SIGHUP is ignored until the new run's loop handles it again, because
    # its default action would kill the process in between.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fdpass.reexec(env={**os.environ, "EXAMPLE_RUN": str(RUN + 1)})
