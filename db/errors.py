"""Errors of the preference log: one line that says what is wrong and what to do."""


class LogError(Exception):
    pass


class LogUnreachable(LogError):
    """The log cannot be reached right now (server down, file locked): retrying may help."""


class LogGone(LogError):
    """The SQLite file was deleted or replaced under a running process: writes would be lost, so stop."""


class AccountInactive(LogError):
    """The account was deactivated: it may not claim, vote, undo or skip."""


class RunCancelled(LogError):
    """The run was cancelled: it takes no new pairs (a waiting judge then skips the step)."""
