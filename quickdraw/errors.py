class UserError(Exception):
    """Something the user can fix (a bad file, flag or missing data).

    The command line prints it as one line and exits with code 2; anything else is a bug and keeps
    its traceback.
    """
