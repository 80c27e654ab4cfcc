"""The error type for user mistakes: launchers print it as one line, without a traceback.

Raise `UserError` for anything the user can fix (a missing or malformed file, a flag or
config value out of range); its message names the file or field. Every other exception
is a bug and keeps its traceback. `UserError` is a `ValueError`, so callers that already
catch `ValueError` keep working.
"""


class UserError(ValueError):
    """A mistake in what the user gave: a file, a flag, a config value."""
