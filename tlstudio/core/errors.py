"""Errors a user can cause. Their message is shown as is: it names the file and the problem."""


class UserError(Exception):
    """Bad input from the user (a file, a folder, a setting). Shown without a traceback."""
