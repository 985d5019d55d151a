class UserError(Exception):
    """Something the user can fix (a bad file, flag or missing data).

    The command line prints it as one line and exits with code 2; anything else is a bug and keeps
    its traceback.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C once a search's folder holds a search that `resume` continues; the command line names that command."""

    def __init__(self, experiment):
        super().__init__(str(experiment))
        self.experiment = experiment


class DiskFull(UserError):
    """A search's disk filled up while it ran; the command line adds the command that goes on once there is space."""

    def __init__(self, disk: str, experiment):
        super().__init__(disk)
        self.experiment = experiment


class StorageFault(UserError):
    """A search's object storage failed it while it ran (out of reach, files deleted); the command line adds the command
    that goes on once the storage is back."""

    def __init__(self, fault: str, experiment):
        super().__init__(fault)
        self.experiment = experiment
