"""The one exception type for problems in the user's data or options.

Its message always says where (file, line or utterance) and what to do, so that a command line
can print it as is, without a traceback.
"""


class DataError(ValueError):
    """Bad input: a file, a line or an utterance that the user has to fix."""

    def __init__(self, what: str, where: str = "", hint: str = ""):
        self.what, self.where, self.hint = what, where, hint
        msg = f"{where}: {what}" if where else what
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
