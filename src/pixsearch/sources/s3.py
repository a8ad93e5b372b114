"""S3 and S3-compatible stores (MinIO, Cloudflare R2, Ceph, ...) through s3fs (fsspec), with credentials the AWS
way: botocore's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and the
shared files, SSO, roles), AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for another store, AWS_REGION or
AWS_DEFAULT_REGION. Nothing is passed along but the endpoint and region; the secrets stay with botocore.

botocore's and s3fs' own retries are off (one attempt each): sources/retry.py retries with the status and
Retry-After in view. Listing is one ListObjectsV2 call per 1,000 objects; a read is one GetObject with a Range
capped at max_bytes + 1.
"""
from __future__ import annotations

import asyncio
import os

from pixsearch.sources.entry import ObjectEntry, ReadOptions, md5_hex, object_mtime_ns
from pixsearch.sources.errors import CredentialsError, MissingExtra, ObjectReadError, SourceError
from pixsearch.sources.retry import RETRIED_STATUSES, HttpFailure, exception_chain, retry_after_seconds
from pixsearch.sources.urls import ObjectUrl

HOW_TO_SIGN_IN = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or "
                  "AWS_PROFILE naming a profile in ~/.aws/credentials; for an S3-compatible store also "
                  "AWS_ENDPOINT_URL")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
               "InvalidClientTokenId", "UnrecognizedClientException"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "ServiceUnavailable", "InternalError", "RequestTimeout"}


def credential_variables() -> tuple[str, ...]:
    return ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE")


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _credential_source() -> str:
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if os.environ.get("AWS_PROFILE"):
        return f"the profile named by AWS_PROFILE ({os.environ['AWS_PROFILE']})"
    return "the AWS credential chain (default profile, SSO, role)"


class S3Source:
    scheme = "s3"

    def __init__(self) -> None:
        try:
            from s3fs import S3FileSystem
        except ImportError:
            raise MissingExtra("s3fs") from None
        self.using = _credential_source()
        client = {"endpoint_url": endpoint_url()} if endpoint_url() else {}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client["region_name"] = region
        self.fs = S3FileSystem(skip_instance_cache=True, use_listings_cache=False, client_kwargs=client,
                               # SigV4 for presigned URLs too (botocore may presign with the deprecated SigV2)
                               config_kwargs={"retries": {"total_max_attempts": 1}, "signature_version": "s3v4"})
        self.fs.retries = 1  # s3fs' own retry loop (a class attribute, not a constructor argument)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.fs.loop

    async def list(self, url: ObjectUrl, prefix: str) -> list[ObjectEntry]:
        entries, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = await self.fs._call_s3("list_objects_v2", Bucket=url.bucket, Prefix=prefix, **extra)
            for item in page.get("Contents", ()):
                etag = item.get("ETag")
                entries.append(ObjectEntry(str(url.child(item["Key"])), int(item["Size"]),
                                           object_mtime_ns(item.get("LastModified"), etag), etag, md5_hex(etag)))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return entries

    async def read(self, url: ObjectUrl, size_hint: int | None, options: ReadOptions) -> bytes:
        ranged = {"Range": f"bytes=0-{options.max_bytes}"} if size_hint != 0 else {}
        response = await self.fs._call_s3("get_object", Bucket=url.bucket, Key=url.key, **ranged)
        body = response["Body"]
        try:
            return await body.read()
        finally:
            body.close()

    async def signed_read_url(self, url: ObjectUrl, expires_s: int) -> str:
        """A presigned GetObject URL (s3fs' sign, awaited on its loop)."""
        return await self.fs._url(f"{url.bucket}/{url.key}", expires=expires_s)

    async def exists(self, url: ObjectUrl) -> bool:
        try:
            await self.fs._call_s3("head_object", Bucket=url.bucket, Key=url.key)
        except FileNotFoundError:
            return False
        return True

    def classify(self, exc: BaseException) -> HttpFailure | None:
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

        for link in exception_chain(exc):
            if isinstance(link, ClientError):
                meta = link.response.get("ResponseMetadata", {})
                status = meta.get("HTTPStatusCode")
                code = link.response.get("Error", {}).get("Code")
                return HttpFailure(status, code, retry_after_seconds(meta.get("HTTPHeaders")),
                                   status in RETRIED_STATUSES or code in _THROTTLED)
            if isinstance(link, (BotoConnectionError, HTTPClientError, asyncio.TimeoutError, ConnectionError)):
                return HttpFailure(None, type(link).__name__, None, True)
        return None

    def source_error(self, exc: BaseException, url: ObjectUrl) -> Exception:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        for link in exception_chain(exc):
            if isinstance(link, (NoCredentialsError, PartialCredentialsError)):
                return CredentialsError(f"no credentials for S3: {HOW_TO_SIGN_IN}")
        failure = self.classify(exc)
        code = failure.code if failure is not None else None
        status = failure.status if failure is not None else None
        if code in _AUTH_CODES:
            return CredentialsError(f"S3 refused the credentials from {self.using} ({code}): check them, or "
                                    f"{HOW_TO_SIGN_IN}")
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return CredentialsError(f"the credentials from {self.using} may not list and read bucket {url.bucket!r} "
                                    f"({code or status}): they need s3:ListBucket and s3:GetObject")
        if code == "NoSuchBucket":
            return SourceError(f"{url}: there is no bucket {url.bucket!r}"
                               + (f" at {endpoint_url()}" if endpoint_url() else ""))
        if code in ("NoSuchKey", "404") or status == 404 or isinstance(exc, FileNotFoundError):
            return ObjectReadError("the object is gone (deleted since it was listed?)")
        if failure is not None:
            what = f"HTTP {status}" if status is not None else "no answer"
            return SourceError(f"{url}: S3 failed ({what}{', ' + code if code else ''})")
        return SourceError(f"{url}: S3 failed ({type(exc).__name__})")
