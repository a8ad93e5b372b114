"""What goes wrong with an object store, said without any secret: messages are built from the service, the
container or bucket, status codes and error codes only — never from a server's free text or a request URL, which can
carry a SAS token or a signature."""
from __future__ import annotations


class SourceError(Exception):
    """A source cannot be listed or used at all (no such container, no permission, no credentials): the run stops
    with this message before anything is written."""


class CredentialsError(SourceError):
    """Credentials are missing, or the service refused them; the message names the variables to set."""


class ObjectReadError(ValueError):
    """One object could not be read: a per-object failure of the run (the image stage's ValueError rule)."""


class MissingExtra(SourceError):
    """The optional packages for object stores are not installed."""

    def __init__(self, package: str):
        super().__init__(f"reading object stores needs {package}: pip install 'pixsearch[cloud]'")
