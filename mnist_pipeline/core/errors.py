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


def printable(text: str) -> str:
    """A file or class name as one line of text: a newline, a tab, a terminal escape or another control
    character as its escape (`a\\nb.png`), bytes that are not UTF-8 as `\\xNN`: a name can neither split
    an output line nor drive the terminal."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class PipelineError(Exception):
    """A fault the user can act on; the message names the file, key or URL and what was expected."""
