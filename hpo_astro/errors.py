"""The one exception type that means "the user gave bad input"; the CLI turns it into one line and exit 2."""


class UserError(Exception):
    """Bad input from the user (a file, a URL, an option value). The message is shown as-is, on one line."""
