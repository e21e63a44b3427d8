class UserError(Exception):
    """Bad input the user can fix; the message names the file/field/row and says what to do.

    The CLI prints it without a traceback and exits 2."""
