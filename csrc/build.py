"""cffi build script for the fdpass C core (API mode, out-of-line).

setup.py names this file in cffi_modules. The declarations and the code live
in fdpass.h and fdpass.c beside it, so the C can be read and tested as C.
"""
import os
import pathlib

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent
# setuptools rejects absolute source paths, and runs this script from the
# project root, so the C files are named relative to the working directory.
CSRC_RELATIVE = os.path.relpath(CSRC)

ffibuilder = FFI()
ffibuilder.cdef((CSRC / "fdpass.h").read_text())
ffibuilder.set_source(
    "fdpass._fdpass",
    '#include "fdpass.h"\n',
    sources=[os.path.join(CSRC_RELATIVE, "fdpass.c")],
    include_dirs=[CSRC_RELATIVE],
    extra_compile_args=["-std=gnu99", "-Wall", "-Wextra", "-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
