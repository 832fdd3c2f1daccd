"""fdpass_unshare_private_pages(), which a forked standby and its parent call to stop sharing pages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# Runs in a child of its own, because pytest's process may run threads, and fork() there is unsafe.
PROGRAM = r"""
import json, os, sys
from fdpass import _native

def shared_dirty_kib():
    with open("/proc/self/smaps_rollup") as stream:
        for line in stream:
            if line.startswith("Shared_Dirty:"):
                return int(line.split()[1])

block = bytearray(os.urandom(1024)) * (32 * 1024)  # 32 MiB, resident and dirty
digest = hash(bytes(block[::4096]))
to_child_read, to_child_write = os.pipe()
from_child_read, from_child_write = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(to_child_read, 1)
    pages = _native.unshare_private_pages()
    intact = hash(bytes(block[::4096])) == digest
    os.write(from_child_write, json.dumps([pages, intact]).encode())
    os.read(to_child_read, 1)
    os._exit(0)

before = shared_dirty_kib()
os.write(to_child_write, b"x")
child_pages, child_intact = json.loads(os.read(from_child_read, 4096))
pages = _native.unshare_private_pages()
after = shared_dirty_kib()
intact = hash(bytes(block[::4096])) == digest
again = _native.unshare_private_pages()
os.write(to_child_write, b"x")
os.waitpid(pid, 0)
print(json.dumps({"before_kib": before, "after_kib": after, "pages": pages, "child_pages": child_pages,
                  "intact": intact, "child_intact": child_intact, "again": again}))
"""


def test_unshare_ends_shared_dirty_pages():
    """After both call it, the 32 MiB block that fork() left shared is private to each, with its bytes unchanged."""
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=50, check=True)
    figures = json.loads(result.stdout)

    assert figures["before_kib"] >= 32 * 1024, figures
    assert figures["after_kib"] < 4 * 1024, figures
    assert figures["pages"] >= 32 * 1024 // 4, figures
    assert figures["child_pages"] >= 32 * 1024 // 4, figures
    assert figures["intact"] and figures["child_intact"], figures
    # Pages that are private already are counted again, but nothing changes.
    assert figures["again"] >= figures["pages"] * 0.9, figures
