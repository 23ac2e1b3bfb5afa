"""The error type for bad user input (issue 20).

`InputError` is raised for input a user can fix: an unknown name, a value a field does not allow, a
file that is not what it should be, a Byzantine count beyond a rule's limit. Its message is one
line naming the value and what is allowed, and it is raised before any expensive work. The
command line (`strike_jax.cli`, the `experiments/` scripts) turns it, and only it, into one line
on stderr and exit code 2; any other exception is a bug and keeps its traceback (exit code 1).

It subclasses `ValueError`, so code that caught `ValueError` for bad input keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a one-line message naming the value and what is allowed."""


__all__ = ["InputError"]
