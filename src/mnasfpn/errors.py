"""The project's one error type.

Every error a user can cause or fix (a bad file, a missing device, a table made for
something else) derives from `MnasfpnError`. Its message is one line that says what was
wrong and what to do; each CLI catches this type once and prints the message. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class MnasfpnError(Exception):
    """A one-line, user-facing error (what was wrong, what to do)."""
