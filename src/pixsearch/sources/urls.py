"""Object URLs: `az://container/prefix` (also `abfs://`, `abfss://`) and `s3://bucket/prefix`, in one spelling.

An object's URL is its identity in an index (its `path`, from which its key is derived), so every spelling of one
object must give one URL: the scheme is lowercased and `abfs`/`abfss` become `az`; a root's trailing slashes go.
The storage account (Azure) or endpoint (S3-compatible stores) is not part of the URL: it comes from the
environment, as credentials do (see azure.py, s3.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

SCHEMES = {"az": "az", "abfs": "az", "abfss": "az", "s3": "s3"}
SERVICE_NAMES = {"az": "Azure Blob Storage", "s3": "S3"}


@dataclass(frozen=True)
class ObjectUrl:
    scheme: str  # "az" or "s3"
    bucket: str  # the container (Azure) or bucket (S3)
    key: str  # the object's name or the prefix, without leading or trailing "/" ("" for a whole bucket)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    @property
    def service(self) -> str:
        return SERVICE_NAMES[self.scheme]

    def child(self, key: str) -> "ObjectUrl":
        return ObjectUrl(self.scheme, self.bucket, key)


def is_object_url(text: str | os.PathLike) -> bool:
    """Whether a source names an object store location rather than a local file or folder."""
    if not isinstance(text, str):
        return False
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def parse_url(text: str) -> ObjectUrl:
    """An object URL's parts; ValueError (naming the forms accepted) for anything else."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"not an object store URL: {text!r} (use az://CONTAINER/PREFIX or s3://BUCKET/PREFIX)")
    bucket, _, key = rest.partition("/")
    if not bucket or "@" in bucket or any(ch in bucket for ch in "?#\\ "):
        raise ValueError(f"{text!r} names no container or bucket: use az://CONTAINER/PREFIX or s3://BUCKET/PREFIX "
                         "(the account or endpoint comes from the environment)")
    return ObjectUrl(SCHEMES[scheme.lower()], bucket, key.strip("/"))


def normal_url(text: str) -> str:
    """An object URL's one spelling (see the module docstring)."""
    return str(parse_url(text))


def url_inside(url: str, root: str) -> bool:
    """Whether object `url` is `root` or lies under it as a folder (`az://c/a` holds `az://c/a/x.jpg`, not
    `az://c/ab.jpg`); both in normal_url form. Text only: no request is made."""
    if url == root:
        return True
    parsed = parse_url(root)
    return url.startswith(str(parsed) + "/")
