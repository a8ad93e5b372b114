"""Azure Blob Storage through adlfs (fsspec), with credentials the Azure way, from the environment only:

1. AZURE_STORAGE_CONNECTION_STRING (Azurite's, or a real account's);
2. AZURE_STORAGE_ACCOUNT_NAME (or AZURE_STORAGE_ACCOUNT, as the az CLI has it) with AZURE_STORAGE_ACCOUNT_KEY
   (or AZURE_STORAGE_KEY), or with AZURE_STORAGE_SAS_TOKEN;
3. AZURE_STORAGE_ACCOUNT_NAME alone: azure-identity's DefaultAzureCredential (environment, managed identity,
   `az login`, ...) when azure-identity is installed.

With 2 and 3 the blob endpoint is https://ACCOUNT.blob.core.windows.net, or AZURE_STORAGE_SERVICE_ENDPOINT when
set (the az CLI's variable for --blob-endpoint: a sovereign cloud, a private endpoint, Azurite). adlfs' own
account_host cannot say this (it is always https), which is one reason the client is made here.

The SDK's own retries are off (retry_total=0): sources/retry.py retries with the status and Retry-After in view.
Listing goes through the container client rather than adlfs' find(), which answers a missing container with an
empty listing — that would read as "every photo deleted" and prune the index.
"""
from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from pixsearch.sources.entry import ObjectEntry, ReadOptions, md5_hex, object_mtime_ns
from pixsearch.sources.errors import CredentialsError, MissingExtra, ObjectReadError, SourceError
from pixsearch.sources.retry import RETRIED_STATUSES, HttpFailure, exception_chain, retry_after_seconds
from pixsearch.sources.urls import ObjectUrl

CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
SERVICE_ENDPOINT = "AZURE_STORAGE_SERVICE_ENDPOINT"
HOW_TO_SIGN_IN = (f"set {CONNECTION_STRING}, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
                  "AZURE_STORAGE_SAS_TOKEN, or AZURE_STORAGE_ACCOUNT_NAME alone to sign in with azure-identity's "
                  "DefaultAzureCredential (pip install azure-identity)")
_AUTH_CODES = {"AuthenticationFailed", "AuthorizationFailure", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}
_PERMISSION_CODES = {"AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch",
                     "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch", "InsufficientAccountPermissions"}


def _first(*names: str) -> tuple[str | None, str | None]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return name, value
    return None, None


def credential_variables() -> tuple[str, ...]:
    """The environment variables a filesystem is made from, in the order they are looked at (for caching)."""
    return (CONNECTION_STRING, "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", SERVICE_ENDPOINT, "AZURE_CLIENT_ID", "AZURE_TENANT_ID")


class AzureSource:
    """One account's blob service, as the environment describes it."""

    scheme = "az"

    def __init__(self) -> None:
        try:
            from adlfs import AzureBlobFileSystem
            from azure.storage.blob.aio import BlobServiceClient
        except ImportError:
            raise MissingExtra("adlfs") from None
        self.using, make_client = _client_factory(BlobServiceClient)

        class BlobFileSystem(AzureBlobFileSystem):
            def do_connect(self) -> None:  # adlfs' own connect reads credentials itself, with SDK retries on
                self.service_client = make_client()

        self.fs = BlobFileSystem(anon=True, skip_instance_cache=True, use_listings_cache=False)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.fs.loop

    async def list(self, url: ObjectUrl, prefix: str) -> list[ObjectEntry]:
        container = self.fs.service_client.get_container_client(url.bucket)
        entries = []
        async for blob in container.list_blobs(name_starts_with=prefix):
            settings = blob.content_settings
            md5 = md5_hex(settings.content_md5) if settings is not None else None
            entries.append(ObjectEntry(str(url.child(blob.name)), int(blob.size), object_mtime_ns(
                blob.last_modified, blob.etag), blob.etag, md5))
        return entries

    async def read(self, url: ObjectUrl, size_hint: int | None, options: ReadOptions) -> bytes:
        path = f"{url.bucket}/{url.key}"
        return await self.fs._cat_file(path, start=0, end=options.max_bytes + 1)

    async def signed_read_url(self, url: ObjectUrl, expires_s: int) -> str | None:
        """The blob's URL with a read-only SAS (sp=r) expiring in `expires_s`: signed with the account key when the
        credential is one, else with a user delegation key (azure-identity; kept until near its own expiry). None
        for a SAS token's credential (it cannot sign another, and is the user's own to hand out)."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        client = self.fs.service_client
        expiry = datetime.now(timezone.utc) + timedelta(seconds=expires_s)
        signing: dict[str, Any] = {}
        account_key = getattr(client.credential, "account_key", None)
        if account_key:
            signing["account_key"] = account_key
        elif hasattr(client.credential, "get_token"):
            signing["user_delegation_key"] = await self._delegation_key(client, expiry)
        else:
            return None
        sas = generate_blob_sas(client.account_name, url.bucket, url.key, permission=BlobSasPermissions(read=True),
                                expiry=expiry, **signing)
        return f"{client.get_blob_client(url.bucket, url.key).url}?{sas}"

    async def _delegation_key(self, client: Any, needed_until: datetime) -> Any:
        key, valid_until = getattr(self, "_user_delegation", (None, None))
        if key is None or valid_until < needed_until:
            start = datetime.now(timezone.utc) - timedelta(minutes=5)
            valid_until = needed_until + timedelta(hours=6)  # at most 7 days; one key signs many photos' URLs
            key = await client.get_user_delegation_key(start, valid_until)
            self._user_delegation = (key, valid_until)
        return key

    async def exists(self, url: ObjectUrl) -> bool:
        blob = self.fs.service_client.get_blob_client(url.bucket, url.key)
        return await blob.exists()

    def classify(self, exc: BaseException) -> HttpFailure | None:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        for link in exception_chain(exc):
            if isinstance(link, HttpResponseError) and link.status_code is not None:
                headers = link.response.headers if link.response is not None else None
                status = int(link.status_code)
                code = getattr(link.error_code, "value", link.error_code)  # a StorageErrorCode or the header's text
                return HttpFailure(status, code, retry_after_seconds(headers), status in RETRIED_STATUSES)
            if isinstance(link, (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError, ConnectionError)):
                return HttpFailure(None, type(link).__name__, None, True)
        return None

    def source_error(self, exc: BaseException, url: ObjectUrl) -> Exception:
        """The error to report for a listing that failed (SourceError: the run stops) — or for one object's read
        (ObjectReadError), when the account itself is fine. Never the server's text, which may quote the URL."""
        from azure.core.exceptions import ClientAuthenticationError

        for link in exception_chain(exc):
            if type(link).__name__ == "AzureSigningError":
                return CredentialsError(f"Azure Blob Storage: the account key in {self.using} is not valid "
                                        f"(it must be the base64 key shown for the account); {HOW_TO_SIGN_IN}")
            if type(link).__name__ == "CredentialUnavailableError":
                return CredentialsError(f"Azure Blob Storage: no credentials found: {HOW_TO_SIGN_IN}")
        failure = self.classify(exc)
        code = failure.code if failure is not None else None
        status = failure.status if failure is not None else None
        if code in _AUTH_CODES or isinstance(exc, ClientAuthenticationError) and code not in _PERMISSION_CODES:
            return CredentialsError(f"Azure Blob Storage refused the credentials from {self.using} ({code or status}):"
                                    f" check {self.using}")
        if code in _PERMISSION_CODES or status == 403:
            return CredentialsError(f"the credentials from {self.using} may not list and read container "
                                    f"{url.bucket!r} ({code or status}): they need list and read permission "
                                    "(the Storage Blob Data Reader role, or a SAS token with r and l)")
        if code == "ContainerNotFound":
            return SourceError(f"{url}: the storage account has no container {url.bucket!r}")
        if isinstance(exc, FileNotFoundError) or code == "BlobNotFound" or status == 404:
            return ObjectReadError("the object is gone (deleted since it was listed?)")
        if failure is not None:
            what = f"HTTP {status}" if status is not None else "no answer"
            return SourceError(f"{url}: Azure Blob Storage failed ({what}{', ' + code if code else ''})")
        return SourceError(f"{url}: Azure Blob Storage failed ({type(exc).__name__})")


def _client_factory(BlobServiceClient: Any) -> tuple[str, Any]:
    """(the variable(s) the credentials come from, a function making an async service client from them)."""
    options = {"retry_total": 0}
    name, connection_string = _first(CONNECTION_STRING)
    if connection_string:
        try:
            BlobServiceClient.from_connection_string(connection_string, **options)  # checks its form, sends nothing
        except ValueError:
            raise CredentialsError(f"{CONNECTION_STRING} is not a valid connection string (it needs AccountName, "
                                   "AccountKey or SharedAccessSignature, and an endpoint)") from None
        return name, lambda: BlobServiceClient.from_connection_string(connection_string, **options)
    account_var, account = _first("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT")
    if not account:
        raise CredentialsError(f"no credentials for Azure Blob Storage: {HOW_TO_SIGN_IN}")
    url = os.environ.get(SERVICE_ENDPOINT) or f"https://{account}.blob.core.windows.net"
    key_var, key = _first("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY")
    if key:
        return f"{account_var} and {key_var}", lambda: BlobServiceClient(
            url, credential={"account_name": account, "account_key": key}, **options)
    sas_var, sas = _first("AZURE_STORAGE_SAS_TOKEN")
    if sas:
        return f"{account_var} and {sas_var}", lambda: BlobServiceClient(url, credential=sas.lstrip("?"), **options)
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise CredentialsError(f"no credentials for Azure Blob Storage account {account!r}: {HOW_TO_SIGN_IN}") from None
    return "DefaultAzureCredential (azure-identity)", lambda: BlobServiceClient(
        url, credential=DefaultAzureCredential(), **options)
