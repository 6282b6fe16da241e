"""One exception type for every fault a user can cause or meet.

Stages catch it at the top and print its one-line message instead of a traceback.
"""


class PipelineError(Exception):
    """A fault the user can act on; the message names the file, key or URL and what was expected."""
