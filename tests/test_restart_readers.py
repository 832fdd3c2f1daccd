"""reexec() with buffered readers among the passed fds: their read-ahead must not be skipped or lost."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)

# Run 1 reads the first line of a file through a buffered reader, which reads
# a whole buffer ahead, and passes the reader. Run 2 reads on from the fd.
FILE_READER_PROGRAM = """
import json, os, sys, fdpass
inherited = fdpass.inherit()
if "data" in inherited:
    print(json.dumps({"pid": os.getpid(), "next": inherited["data"].readline().decode()}), flush=True)
    sys.exit(0)
with open(sys.argv[1], "w") as stream:
    stream.writelines(f"line {number:05}\\n" for number in range(2000))
reader = open(sys.argv[1], sys.argv[2])
first = reader.readline()
print(json.dumps({"pid": os.getpid(), "first": first if isinstance(first, str) else first.decode()}), flush=True)
fdpass.reexec({"data": reader})
"""


@pytest.mark.parametrize("mode", ["rb", "r", "r+b"])
def test_file_reader_resumes_at_its_position(children, tmp_path, mode):
    """The new run reads the line after the one the old run read, not the line after its read-ahead."""
    child = children.python("-c", FILE_READER_PROGRAM, str(tmp_path / "lines.txt"), mode)
    first = child.read_json()
    second = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert first["first"] == "line 00000\n"
    assert second["pid"] == first["pid"]
    assert second["next"] == "line 00001\n"


# makefile() buffers what it reads from the socket, which no fd offset can put
# back, so reexec() must reject it before anything changes.
SOCKET_READER_PROGRAM = """
import json, socket, fdpass
left, right = socket.socketpair()
right.sendall(b"first\\nsecond\\n")
reader = left.makefile("rb")
first = reader.readline()
try:
    fdpass.reexec({"conn": reader})
except ValueError as error:
    message = str(error)
print(json.dumps({"message": message, "first": first.decode(), "next": reader.readline().decode()}), flush=True)
"""


def test_socket_reader_rejected(children):
    """A buffered reader on a socket raises ValueError, and the program keeps its buffered bytes."""
    child = children.python("-c", SOCKET_READER_PROGRAM)
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert "buffered reader on an fd that cannot seek" in report["message"]
    assert "'conn'" in report["message"]
    assert report["first"] == "first\n"
    assert report["next"] == "second\n"


# execve of a missing file fails after reexec() has moved the reader's fd
# offset back, so the offset must return to where the reader's buffer ends.
FAILED_EXEC_PROGRAM = """
import json, os, sys, fdpass
with open(sys.argv[1], "w") as stream:
    stream.writelines(f"line {number:05}\\n" for number in range(2000))
reader = open(sys.argv[1], "rb")
reader.readline()
offset_before = os.lseek(reader.fileno(), 0, os.SEEK_CUR)
try:
    fdpass.reexec({"data": reader}, argv=["/nonexistent/fdpass-test-program"])
except OSError as error:
    failure = type(error).__name__
offset_after = os.lseek(reader.fileno(), 0, os.SEEK_CUR)
lines = [reader.readline().decode() for _ in range(1000)]
print(json.dumps({"failure": failure, "before": offset_before, "after": offset_after, "lines": lines}), flush=True)
"""


def test_failed_exec_restores_reader_offset(children, tmp_path):
    """After a failed execve the reader's fd offset is back past its buffer, and reading goes on in order."""
    child = children.python("-c", FAILED_EXEC_PROGRAM, str(tmp_path / "lines.txt"))
    report = child.read_json()
    status, _, stderr = child.finish()

    assert status == 0, stderr
    assert report["failure"] == "FileNotFoundError"
    assert report["after"] == report["before"]
    assert report["before"] > len("line 00000\n")
    assert report["lines"] == [f"line {number:05}\n" for number in range(1, 1001)]
