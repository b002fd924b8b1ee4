"""Errors a user can cause. Each message is one sentence naming the input (file, column, argument)."""


class RetailSimInputError(ValueError):
    """Bad user input: a missing column, an unparsable value, an empty file, a wrong argument.

    The CLI prints the message alone (no traceback) and exits with status 2.
    """
