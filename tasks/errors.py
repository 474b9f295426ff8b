"""The one exception type for mistakes a user can make; the CLIs turn it into exit code 2."""


class UserError(Exception):
    """A problem with the user's input: a path, an option, a file. Its message is one line."""
