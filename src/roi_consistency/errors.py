"""The one exception type the CLI turns into a clean message (no traceback)."""


class UserError(Exception):
    """Bad input or environment: the message names the file, row or flag and what to do."""
