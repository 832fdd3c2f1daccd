# Types of the module that cffi generates from csrc/fdpass.h. Keep the
# functions of _Lib in step with that header: mypy checks every call in
# fdpass/_native.py against them.
from typing import Any

class _FFI:
    NULL: Any
    errno: int
    def new(self, cdecl: str, init: Any = ...) -> Any: ...
    def string(self, cdata: Any, maxlen: int = ...) -> bytes: ...

class _Lib:
    def fdpass_exec(self, path: Any, argv: Any, envp: Any, fds: Any, nfds: int, bad_index: Any) -> int: ...
    def fdpass_inspect(self, fds: Any, nfds: int, out: Any) -> int: ...
    def fdpass_set_cloexec(self, fds: Any, nfds: int, cloexec: int) -> int: ...
    def fdpass_spawn(
        self, path: Any, argv: Any, envp: Any, fds: Any, nfds: int, flags: int, bad_index: Any
    ) -> int: ...
    def fdpass_set_child_subreaper(self, on: int) -> int: ...
    FDPASS_SPAWN_LISTEN_PID: int
    FDPASS_SPAWN_NEW_PROCESS_GROUP: int
    FDPASS_SPAWN_PARENT_DEATHSIG: int

ffi: _FFI
lib: _Lib
