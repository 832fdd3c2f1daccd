"""Run restartpkg.loop as a script: restart_loop.py ARGS..."""

from restartpkg.loop import main

main()
