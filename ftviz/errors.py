"""The one exception type the command line turns into a one-line message and exit code 2."""


class FtvizError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


class MissingStageError(FtvizError):
    """A stage's input files are not there yet; the message names the command that makes them."""
