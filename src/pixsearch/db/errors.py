"""What db/ raises: its own types, so nothing above store/ needs to know the driver."""
from __future__ import annotations


class DatabaseError(RuntimeError):
    """The database cannot be reached or cannot do what pixsearch needs; the message says how to fix it."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached right now (stopped, restarting, killed, out of connections): nothing was
    done; the same request may succeed shortly."""


class DatabaseFull(DatabaseError):
    """The database's disk is full: the statement failed and its transaction was rolled back."""


class QueryTimeout(DatabaseError):
    """A statement ran past the statement_timeout (or was cancelled): the server is fine, the statement was too
    slow; its transaction was rolled back."""


class StatementAborted(DatabaseError):
    """A working server aborted a statement for a reason of its own state (a deadlock, a lock or serialization
    conflict, an administrator's command): its transaction was rolled back; the same request may succeed again."""
