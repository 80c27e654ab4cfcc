"""User-error types of the data pipelines (see `avjax.errors`).

`MissingFileError` is a `UserError` (one `error:` line in the launchers) that is also a
`FileNotFoundError`, so callers that catch a missing file keep working.
"""

from avjax.errors import UserError

__all__ = ["MissingFileError", "UserError"]


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (a path, a config field) does not exist."""
