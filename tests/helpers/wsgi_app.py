"""A WSGI app for gunicorn that answers every request with "PID PGID"."""

import os


def app(environ, start_response):
    body = f"{os.getpid()} {os.getpgid(0)}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
