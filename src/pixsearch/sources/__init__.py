"""Photo sources in object stores: Azure Blob Storage (`az://container/prefix`, also `abfs://`) and S3 or any
S3-compatible store (`s3://bucket/prefix`), through fsspec (adlfs, s3fs: the optional extra `pixsearch[cloud]`).

A source lists entries (URL, size, Last-Modified, ETag, MD5 where the service states one) and reads one entry's
bytes. Credentials come from each ecosystem's environment variables only, never from an argument, so nothing that
names a source (a URL, the ReadOptions) carries a secret, and a worker elsewhere reads with its own environment.
This package knows nothing of images or indexes: ingest/ decides what the objects mean, service/ where they may
be read from.
"""
from pixsearch.sources.access import (Downloads, Listing, check_listing, list_objects, object_exists, read_object,
                                      signed_read_url)
from pixsearch.sources.entry import ObjectEntry, ReadOptions
from pixsearch.sources.errors import CredentialsError, MissingExtra, ObjectReadError, SourceError
from pixsearch.sources.retry import RetryPolicy
from pixsearch.sources.urls import ObjectUrl, is_object_url, normal_url, parse_url, url_inside

__all__ = ["CredentialsError", "Downloads", "Listing", "MissingExtra", "ObjectEntry", "ObjectReadError", "ObjectUrl",
           "ReadOptions", "RetryPolicy", "SourceError", "check_listing", "is_object_url", "list_objects", "normal_url",
           "object_exists", "parse_url", "read_object", "signed_read_url", "url_inside"]
