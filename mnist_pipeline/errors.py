"""One exception type for every fault a user can cause or meet, and the redaction of what no message may show.

Stages catch it at the top and print its one-line message instead of a traceback.
"""

import re

# The user-info part of a URL (`https://user:secret@host/`): a password or token.
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def redact(text: str) -> str:
    """`https://user:secret@host/x` -> `https://***@host/x`: credentials in a URL never reach a message,
    a log or a terminal, whichever message quotes the URL."""
    return _CREDENTIALS.sub(r"\1***@", text)


class PipelineError(Exception):
    """A fault the user can act on; the message names the file, key or URL and what was expected."""
