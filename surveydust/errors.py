"""The package's own error for bad input: the one a user can act on."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input to surveydust: a file, a table, a setting, a band or an argument that cannot be used.

    The message is one line that says what is wrong and how to fix it; the command line prints it
    as ``Error: <message>`` (exit 1) without a traceback. A :class:`ValueError` subclass, so code
    that catches ``ValueError`` keeps working. Anything else that escapes surveydust is a bug: the
    command line shows its traceback and asks for a report.
    """
