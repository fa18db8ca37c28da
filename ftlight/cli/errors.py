"""How every ``ftlight`` subcommand ends: its exit codes and its one-line errors.

* ``0``: done.
* ``1``: a known problem with what was given (a missing folder or file, an unreadable image or
  checkpoint, unavailable weights, a NaN loss, ...): one line on standard error,
  ``ftlight: error: <what was received, what was expected, the fix>``, and no traceback.
* ``2``: the command line itself is wrong (an unknown flag, a missing argument, a bad value
  type): the argument parser prints the usage and its own ``error:`` line.
* ``3``: ``ftlight predict --strict`` refused a folder whose classes differ from the
  checkpoint's (nothing written).

``--debug`` or ``FTLIGHT_DEBUG=1`` shows the traceback of a known error instead of its line.
"""

from __future__ import annotations

import os
import sys

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CLASS_MISMATCH = 3
PREFIX = "ftlight: error:"


def debug_enabled() -> bool:
    """``FTLIGHT_DEBUG`` set to anything but ``""`` or ``"0"`` (``--debug`` sets it)."""
    return os.environ.get("FTLIGHT_DEBUG", "0") not in ("", "0")


def summary(err: BaseException | str) -> str:
    """The first line of an error's message (with the second when the first ends in ``:``,
    as in ``3 unreadable files:`` followed by the first of them)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first += f" {lines[1]}" + (" ..." if len(lines) > 2 else "")
    return first


def print_error(message: BaseException | str, code: int = EXIT_ERROR) -> int:
    """Print ``ftlight: error: <message>`` (one line) on standard error; return ``code``."""
    print(f"{PREFIX} {summary(message)}", file=sys.stderr, flush=True)
    return code
