"""Errors of the preference log: one line that says what is wrong and what to do."""


class LogError(Exception):
    pass
