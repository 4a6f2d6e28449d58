"""The base of every error the harness raises on purpose, with a message meant for the user
(the file, key or name at fault and what to do). The CLI prints these as one line; anything
else is a bug and keeps its traceback."""


class HarnessError(Exception):
    """An expected failure whose message says what is wrong and how to fix it."""
