"""Errors a user can cause. Each message is one sentence naming the input (file, column, argument)."""


class RetailSimInputError(ValueError):
    """Bad user input: a missing column, an unparsable value, an empty file, a wrong argument.

    The CLI prints the message alone (no traceback) and exits with status 2.
    """


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by the CLI's handler so that clean-up runs as for Ctrl-C."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors can run to many lines), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
