"""User-facing errors: one line that says what is wrong and what to do. The CLI prints them and exits 2."""


class UserError(Exception):
    pass
