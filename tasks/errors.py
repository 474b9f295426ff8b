"""The one exception type for mistakes a user can make; the CLIs turn it into exit code 2."""


class UserError(Exception):
    """A problem with the user's input: a path, an option, a file. Its message is one line."""


def name_list(names: list[str] | tuple[str, ...], limit: int = 8) -> str:
    """The first ``limit`` names, comma-separated, with ", ..." when there are more: for one-line messages."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
