"""`pixsearch serve --log-format json`: one JSON object per line on stderr, for log shippers (journald, Loki, Fluent
Bit, Vector...): time, level, logger, message, and for each request method, route (the template, as /metrics counts
it), status and duration_ms.

No secrets reach these lines: API keys travel in a header that is never logged, requests are logged by route
template (not their raw path and query), and connection strings are logged only through db.database.redact.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import IO

REQUEST_LOGGER = "pixsearch.api.requests"
LOG_FORMATS = ("text", "json")
# The record attributes a request line carries (given as `extra` by api/metrics.MetricsMiddleware)
REQUEST_FIELDS = ("method", "route", "status", "duration_ms")

request_log = logging.getLogger(REQUEST_LOGGER)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_json(stream: IO[str] | None = None) -> None:
    """Send every log line of this process (pixsearch's, uvicorn's, the libraries') to `stream` (stderr) as JSON:
    pixsearch's and uvicorn's from INFO (server start, requests), other libraries' from WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("pixsearch", "uvicorn"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        for old in list(logger.handlers):  # uvicorn's own text handlers, when it configured itself before
            logger.removeHandler(old)
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # raw paths and client addresses: requests are logged above
