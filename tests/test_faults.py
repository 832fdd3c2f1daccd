"""Fault injection: reexec() under failures the kernel or the program can cause.

Each failure must leave the program running with every fd, fd flag and
signal setting as it was, so it can go on serving.
"""

from __future__ import annotations

import os
import sys

import fdpass


def test_flush_output_survives_closed_stream(monkeypatch):
    """flush_output() skips a closed sys.stdout instead of raising, so reexec() goes on."""
    closed = open(os.devnull, "w")
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)

    fdpass.flush_output()
