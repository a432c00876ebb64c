"""The one exception type the CLI turns into a one-line message instead of a traceback.

Raise `UserError` for anything a user can fix (a wrong path, an unknown name, a file written
by another configuration). Its message is the whole line the user sees, so it names the file
or option and says what was expected.
"""


class UserError(Exception):
    """A problem with the user's input or files, reported as one line (exit code 2)."""


class WeightsNotFound(UserError):
    """Pretrained weights are neither in a local cache nor reachable."""
