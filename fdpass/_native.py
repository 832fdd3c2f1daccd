"""The only module that touches the compiled cffi module.

Each wrapper takes plain Python values, calls one C function, reads ffi.errno
once right after the call and turns a failure into OSError through
raise_errno().
"""

from __future__ import annotations

import os
from collections.abc import Sequence

try:
    from fdpass._fdpass import ffi, lib
except ImportError as error:
    raise ImportError(
        f"fdpass's compiled extension fdpass._fdpass is missing next to {os.path.dirname(__file__)}. "
        "That is a source tree: install fdpass (pip install .) and run from another directory, "
        "or build it in place with pip install -e ."
    ) from error
from fdpass._record import Frozen


class FdInfo(Frozen):
    """Kernel facts about one fd, as struct fdpass_fdinfo stores them."""

    FIELDS = ("fd", "error", "fd_flags", "status_flags", "mode", "family", "type", "protocol", "listening")
    __slots__ = FIELDS

    fd: int
    error: int
    fd_flags: int
    status_flags: int
    mode: int
    family: int
    type: int
    protocol: int
    listening: bool

    def __init__(
        self,
        fd: int,
        error: int,
        fd_flags: int,
        status_flags: int,
        mode: int,
        family: int,
        type: int,
        protocol: int,
        listening: bool,
    ) -> None:
        self._store(fd, error, fd_flags, status_flags, mode, family, type, protocol, listening)


def raise_errno(errno: int, filename: object = None) -> None:
    """Raise OSError for errno, with the standard message and filename."""
    if filename is None:
        raise OSError(errno, os.strerror(errno))
    raise OSError(errno, os.strerror(errno), filename)


def _to_cstrings(items: Sequence[bytes]) -> tuple[object, object]:
    """Return a NULL-terminated char* array over items, and the buffer it points into.

    The caller keeps both alive for the C call. items must not contain NUL.
    """
    # One buffer and one C call, where one ffi.new() per string would cost a
    # microsecond each for every environment variable.
    block = ffi.new("char[]", b"\0".join(items))
    array = ffi.new("char *[]", len(items) + 1)
    lib.fdpass_split_strings(block, len(items), array)
    return array, block


def exec_with_fds(path: bytes, argv: Sequence[bytes], envp: Sequence[bytes], fds: Sequence[int]) -> tuple[int, int]:
    """Call fdpass_exec(). Returns (errno, bad_index) because it returns only on failure.

    bad_index is the index into fds of a closed or repeated fd, or -1.
    """
    c_path = ffi.new("char[]", path)
    c_argv, argv_buffers = _to_cstrings(argv)
    c_envp, envp_buffers = _to_cstrings(envp)
    c_fds = ffi.new("int[]", list(fds)) if fds else ffi.NULL
    bad_index = ffi.new("int *", -1)

    lib.fdpass_exec(c_path, c_argv, c_envp, c_fds, len(fds), bad_index)
    errno = ffi.errno

    del argv_buffers, envp_buffers
    return errno, bad_index[0]


class SpawnFdError(OSError):
    """fdpass_spawn() rejected fds[index]: EBADF if it is closed, EINVAL if it is repeated."""

    def __init__(self, errno: int, index: int) -> None:
        super().__init__(errno, os.strerror(errno))
        self.index = index


def spawn_with_fds(
    path: bytes,
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    fds: Sequence[int],
    *,
    set_listen_pid: bool = True,
    new_process_group: bool = False,
    parent_death_signal: bool = False,
    cwd: bytes | None = None,
) -> int:
    """Start path as a child with fds on 3, 4, ... through fdpass_spawn(); return its PID.

    With set_listen_pid, the child's environment gets LISTEN_PID=<child PID>
    in place of any LISTEN_PID entry of envp. With new_process_group, the
    child leads a new process group. With parent_death_signal, the child gets
    SIGKILL when the calling thread exits. With cwd, the child changes into
    that directory before execve.

    Raises:
        SpawnFdError: fds[index] is closed or repeated; no child was started.
        OSError: the child could not be started, or its execve failed (for
            example ENOENT or EACCES, with path as the filename). No child is
            left behind. A failed change into cwd is reported the same way,
            also with path as the filename.
    """
    c_path = ffi.new("char[]", path)
    c_argv, argv_buffers = _to_cstrings(argv)
    c_envp, envp_buffers = _to_cstrings(envp)
    c_fds = ffi.new("int[]", list(fds)) if fds else ffi.NULL
    bad_index = ffi.new("int *", -1)
    flags = lib.FDPASS_SPAWN_LISTEN_PID if set_listen_pid else 0
    if new_process_group:
        flags |= lib.FDPASS_SPAWN_NEW_PROCESS_GROUP
    if parent_death_signal:
        flags |= lib.FDPASS_SPAWN_PARENT_DEATHSIG

    c_cwd = ffi.NULL if cwd is None else ffi.new("char[]", cwd)
    pid = lib.fdpass_spawn(c_path, c_argv, c_envp, c_fds, len(fds), flags, c_cwd, bad_index)
    errno = ffi.errno

    del argv_buffers, envp_buffers
    if pid == -1:
        if bad_index[0] >= 0:
            raise SpawnFdError(errno, bad_index[0])
        raise_errno(errno, os.fsdecode(path))
    return int(pid)


#: The fields of struct fdpass_fdinfo, in declaration order. Each is a C int
#: or unsigned int, so the struct is an array of ints with no padding.
FDINFO_FIELDS = FdInfo.FIELDS
_FDINFO_IS_INT_ARRAY = ffi.sizeof("struct fdpass_fdinfo") == len(FDINFO_FIELDS) * ffi.sizeof("int")


def inspect_columns(fds: Sequence[int]) -> dict[str, list[int]]:
    """Describe each fd with fdpass_inspect(); return one list per FDINFO_FIELDS name.

    Column i of every list belongs to fds[i], and a closed fd gets error=EBADF.
    The C array is copied into Python ints in one step, with no Python work
    per fd, so this stays fast for thousands of fds.
    """
    count = len(fds)
    c_fds = ffi.new("int[]", list(fds))
    out = ffi.new("struct fdpass_fdinfo[]", count)
    if count and lib.fdpass_inspect(c_fds, count, out) == -1:
        raise_errno(ffi.errno)

    if not _FDINFO_IS_INT_ARRAY:
        return {name: [int(getattr(info, name)) for info in out] for name in FDINFO_FIELDS}
    values = memoryview(ffi.buffer(out)).cast("i").tolist()
    width = len(FDINFO_FIELDS)
    return {name: values[index::width] for index, name in enumerate(FDINFO_FIELDS)}


def all_adoptable_range(first_fd: int, count: int) -> bool:
    """Return True if first_fd .. first_fd + count - 1 are all open with FD_CLOEXEC clear."""
    index = lib.fdpass_find_unadoptable_range(first_fd, count)
    if index == -1:
        raise_errno(ffi.errno)

    return bool(index == count)


def inspect(fds: Sequence[int]) -> list[FdInfo]:
    """Describe each fd with fdpass_inspect(). A closed fd gets error=EBADF."""
    columns = inspect_columns(fds)

    return [
        FdInfo(fd, error, fd_flags, status_flags, mode, family, type, protocol, bool(listening))
        for fd, error, fd_flags, status_flags, mode, family, type, protocol, listening in zip(
            *(columns[name] for name in FDINFO_FIELDS), strict=True
        )
    ]


def set_cloexec(fds: Sequence[int], cloexec: bool = True) -> None:
    """Set or clear FD_CLOEXEC on every fd with one C call."""
    if not fds:
        return

    c_fds = ffi.new("int[]", list(fds))
    if lib.fdpass_set_cloexec(c_fds, len(fds), 1 if cloexec else 0) == -1:
        raise_errno(ffi.errno)


def set_child_subreaper(on: bool = True) -> None:
    """Set or clear PR_SET_CHILD_SUBREAPER, so orphaned descendants become this process's children."""
    if lib.fdpass_set_child_subreaper(1 if on else 0) == -1:
        raise_errno(ffi.errno)


def arm_kill_timer(deadline_ns: int) -> int:
    """Arrange SIGKILL for this process at deadline_ns on CLOCK_MONOTONIC (time.monotonic_ns()); return the timer id.

    Raises:
        OSError: the timer could not be created, for example EAGAIN when the
            process has too many timers or pending signals.
    """
    timer = ffi.new("intptr_t *")
    if lib.fdpass_kill_timer_arm(deadline_ns, timer) == -1:
        raise_errno(ffi.errno)
    return int(timer[0])


def cancel_kill_timer(timer: int) -> None:
    """Delete a timer from arm_kill_timer(), so it sends no SIGKILL."""
    if lib.fdpass_kill_timer_cancel(timer) == -1:
        raise_errno(ffi.errno)


def set_cloexec_range(first_fd: int, count: int) -> None:
    """Set FD_CLOEXEC on first_fd .. first_fd + count - 1, with one close_range() where the kernel has it."""
    if lib.fdpass_set_cloexec_range(first_fd, count) == -1:
        raise_errno(ffi.errno)


def move_to_cpu(cpu: int) -> bool:
    """Migrate the calling thread onto cpu, and give it every CPU again at once; return True if it moved.

    Returns False, and leaves the thread where it is, if it runs on cpu
    already, or if its affinity mask leaves out an online CPU (a cpuset,
    taskset or the program restricted it). See fdpass_move_to_cpu() in
    csrc/fdpass.c for why the mask is not written back as it was read.

    Raises:
        OSError: cpu is negative or at least CPU_SETSIZE (1024 in glibc),
            or sched_setaffinity() failed (EINVAL).
    """
    moved = lib.fdpass_move_to_cpu(cpu)
    if moved == -1:
        raise_errno(ffi.errno)
    return moved == 1


def unshare_private_pages() -> int:
    """Take a private copy of every resident page that fork() left shared, and return the number of pages.

    See fdpass_unshare_private_pages() in csrc/fdpass.c.

    Raises:
        OSError: /proc/self/maps could not be read.
    """
    written = lib.fdpass_unshare_private_pages()
    if written == -1:
        raise_errno(ffi.errno)
    return int(written)
