"""A package that restarts itself, run as a script, with -m and through a launcher."""
