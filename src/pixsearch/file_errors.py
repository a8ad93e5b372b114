"""Why a folder could not be written, in words a user acts on (the embedded server's data directory, uploads)."""
from __future__ import annotations

import errno

_STORAGE_REASONS = {errno.EROFS: "the folder is on a read-only file system", errno.ENOSPC: "no space left on the device",
                    errno.EDQUOT: "the disk quota is exhausted", errno.EACCES: "permission denied",
                    errno.EPERM: "permission denied"}


def storage_reason(exc: OSError) -> str:
    return _STORAGE_REASONS.get(exc.errno, exc.strerror or str(exc))
