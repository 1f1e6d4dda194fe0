"""What the project's commands (`python -m pipeline.summary`, `.report`, `.render`) share:
their argument types and their one way of failing.

A command that meets a bad file or a bad argument prints one line naming it, and exits with
status 2: `fail`. A count argument is a whole number, 0 or more (`count`) or 1 or more
(`positive`).

Usage:

    parser.add_argument("--top", type=count, default=20)
    try:
        ...
    except BAD_INPUT as error:
        return fail("pipeline.summary", error)
"""

import argparse
import sys

BAD_INPUT = (FileNotFoundError, ValueError)
"""What the readers raise for a missing, damaged or foreign file, or a bad argument (one
line, naming it)."""


def count(text: str, least: int = 0) -> int:
    """An argparse type: a whole number, `least` (0) or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is too small: give {least} or more")
    return value


def positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    return count(text, 1)


def fail(prog: str, error: BaseException) -> int:
    """Print `error` as one line after the command's name, on standard error; returns 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


__all__ = ["BAD_INPUT", "count", "fail", "positive"]
