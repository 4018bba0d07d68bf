"""The one exception type for mistakes a user can make and fix.

`run.main` catches :class:`UserError` and prints its message alone (no traceback), so the text must
say what went wrong *and* what to do about it.
"""


class UserError(Exception):
    """A problem in the user's config, data or files, with a message that says how to fix it."""
