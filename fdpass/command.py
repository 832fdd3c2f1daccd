"""Rebuild the command line that started this Python program.

reexec() uses this to run the program again the way it was started:
``python -m pkg args``, ``python script.py args``, ``python -c code args``, or
a console script, with the interpreter options of the first run. The result
must still work after the program has called os.chdir(), so a relative script
path is made absolute, and a ``-m`` program runs again in the directory it
started in. There the interpreter puts that directory first on sys.path, as
in the first run; from another directory, modules there would shadow the
program's own and the standard library.
"""

from __future__ import annotations

import os
import sys

from fdpass._record import Frozen


class StartCommand(Frozen):
    """The executable, argv and working directory that re-run this program.

    cwd is None to run in the current working directory.
    """

    FIELDS = ("executable", "argv", "cwd")
    __slots__ = FIELDS

    executable: str
    argv: list[str]
    cwd: str | None

    def __init__(self, executable: str, argv: list[str], cwd: str | None = None) -> None:
        self._store(executable, argv, cwd)


def _main_module_file() -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path if isinstance(path, str) else None


def _absolute_script(arg: str) -> str:
    # Since Python 3.9, __main__.__file__ is absolute for a script. For a zip
    # application or a directory, it ends in "__main__.py" inside that path.
    main_file = _main_module_file()
    if main_file and os.path.isabs(main_file):
        if os.path.basename(main_file) == "__main__.py" and not arg.endswith(".py"):
            return os.path.dirname(main_file)
        return main_file
    return os.path.abspath(arg)


def _module_start_dir() -> str | None:
    """Return the directory a -m program started in, if its module came from there, else None.

    For "python -m pkg", sys.path[0] is that directory, unless the program
    replaced it. The path of the module file separates the two cases.
    Under -P or -I the interpreter puts no directory first, so a new run
    needs none.
    """
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return None
    # NOTE: a program that replaced sys.path[0] before this runs loses it.
    if not sys.path or not sys.path[0] or not os.path.isabs(sys.path[0]):
        return None
    start_dir = sys.path[0]

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not os.path.isabs(origin):
        return None
    if os.path.commonpath([start_dir, origin]) != start_dir:
        return None
    return start_dir


def current() -> StartCommand:
    """Return the command that starts this program again.

    Raises:
        ValueError: the program was read from standard input or is interactive.
    """
    orig_argv = list(sys.orig_argv)
    argv = list(sys.argv)
    executable = sys.executable

    if not executable:
        raise RuntimeError("sys.executable is empty, so fdpass cannot find the interpreter to run again")
    if argv and argv[0] in ("", "-"):
        # Standard input is consumed, so a re-run would read nothing and exit.
        raise ValueError(
            "this program was read from standard input or runs interactively (sys.argv[0] is "
            f"{argv[0]!r}), so it cannot be run again as it was started; run it from a file or with -m, "
            "or pass argv= to reexec()"
        )
    if not orig_argv or len(argv) > len(orig_argv):
        return StartCommand(executable, [executable, *argv])

    # sys.orig_argv is [interpreter, options..., target, args...] and
    # sys.argv is [target-as-seen, args...], so target sits at this index.
    target = len(orig_argv) - len(argv)
    new_argv = list(orig_argv)

    if target == 0:
        return StartCommand(executable, [executable, *argv])
    if argv[0] == orig_argv[target] and argv[0] not in ("", "-", "-c"):
        new_argv[target] = _absolute_script(argv[0])
    elif orig_argv[target - 1] == "-m" or orig_argv[target].startswith("-m"):
        start_dir = _module_start_dir()
        if start_dir is not None and start_dir != getcwd_or_none():
            return StartCommand(executable, new_argv, cwd=start_dir)

    return StartCommand(executable, new_argv)


def getcwd_or_none() -> str | None:
    """Return os.getcwd(), or None if the working directory was removed."""
    try:
        return os.getcwd()
    except OSError:
        return None


# CPython's short options that take a value, as in its getopt string
# "bBc:dEhiIJm:OPqRsStuvVW:xX:?". Of its long options, only
# --check-hash-based-pycs takes one.
_OPTIONS_WITH_VALUE = frozenset("WX")
_LONG_OPTIONS_WITH_VALUE = frozenset({"--check-hash-based-pycs"})


class PythonCommand(Frozen):
    """A python command line split the way the interpreter reads it.

    kind is "script" (a file, directory or zip file, which is how a console
    script runs too), "module" (-m) or "code" (-c), and target is the path,
    module name or code.
    """

    FIELDS = ("interpreter", "options", "kind", "target", "args")
    __slots__ = FIELDS

    interpreter: str
    options: tuple[str, ...]
    kind: str
    target: str
    args: tuple[str, ...]

    def __init__(self, interpreter: str, options: tuple[str, ...], kind: str, target: str, args: tuple[str, ...]):
        self._store(interpreter, options, kind, target, args)


def parse_python_argv(argv: list[str]) -> PythonCommand:
    """Split argv, a python command line such as current() returns, into options, target and arguments.

    Raises:
        ValueError: argv runs no script, module or code: it reads the
            program from standard input, or it is empty.
    """
    if not argv:
        raise ValueError("the command line is empty, so it names no interpreter")
    options: list[str] = []
    index = 1

    while index < len(argv):
        arg = argv[index]
        if arg in _LONG_OPTIONS_WITH_VALUE:
            options.extend(argv[index : index + 2])
            index += 2
            continue
        if arg == "-" or not arg.startswith("-") or arg == "--":
            break
        if arg.startswith("--"):
            options.append(arg)
            index += 1
            continue

        # A cluster of short flags such as "-uB", which may end in an
        # option whose value is the rest of the cluster or the next argument.
        for position in range(1, len(arg)):
            letter = arg[position]
            if letter in "cm":
                value = arg[position + 1 :] or (argv[index + 1] if index + 1 < len(argv) else None)
                if value is None:
                    raise ValueError(f"the command line {argv!r} ends in -{letter} without a value")
                rest = index + (1 if arg[position + 1 :] else 2)
                if position > 1:
                    options.append(arg[:position])
                kind = "code" if letter == "c" else "module"
                return PythonCommand(argv[0], tuple(options), kind, value, tuple(argv[rest:]))
            if letter in _OPTIONS_WITH_VALUE:
                consumed = 1 if arg[position + 1 :] else 2
                options.extend(argv[index : index + consumed])
                index += consumed
                break
        else:
            options.append(arg)
            index += 1

    if index < len(argv) and argv[index] == "--":
        index += 1
    if index >= len(argv) or argv[index] == "-":
        raise ValueError(f"the command line {argv!r} reads the program from standard input")
    return PythonCommand(argv[0], tuple(options), "script", argv[index], tuple(argv[index + 1 :]))
