"""Where Postgres comes from: the embedded server under PIXSEARCH_HOME, or a server named by PIXSEARCH_DATABASE_URL.

Driver errors that are the database's state rather than a bug leave db/ as its own types (DatabaseError and its
subclasses), so no layer above store/ needs to know the driver."""
from pixsearch.db.database import Database, PoolStatus, open_database
from pixsearch.db.errors import DatabaseError, DatabaseFull, DatabaseUnavailable, QueryTimeout, StatementAborted

__all__ = ["Database", "DatabaseError", "DatabaseFull", "DatabaseUnavailable", "PoolStatus", "QueryTimeout",
           "StatementAborted", "open_database"]
