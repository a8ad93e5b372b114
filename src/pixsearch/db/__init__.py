"""Where Postgres comes from: the embedded server under PIXSEARCH_HOME, or a server named by PIXSEARCH_DATABASE_URL."""
from pixsearch.db.database import Database, open_database
from pixsearch.db.errors import DatabaseError, DatabaseFull, DatabaseUnavailable

__all__ = ["Database", "DatabaseError", "DatabaseFull", "DatabaseUnavailable", "open_database"]
