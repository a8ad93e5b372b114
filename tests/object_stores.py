"""Real object store emulators for the tests, on free 127.0.0.1 ports with temporary workspaces: Azurite (Microsoft's
Azure Storage emulator, installed by `make tools/azurite` into tools/azurite) and moto's S3 server. Requests go
through a small loopback proxy that counts them and can answer some with a status of its choosing (throttling)
before passing the rest on unchanged."""
from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
AZURITE = Path(os.environ.get("PIXSEARCH_AZURITE", REPO / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"))
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret): https://learn.microsoft.com/azure/storage/common/storage-use-azurite
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Fault:
    """Answer the next `times` requests that `matches` with `status` (and `headers`) instead of passing them on."""

    matches: Callable[[str, str], bool]  # (method, path with query) -> bool
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    target: str  # path and query, as sent
    status: int
    at: float


class CountingProxy:
    """A loopback HTTP proxy in front of one emulator: records every request and can inject faults."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self.latency = 0.0  # seconds each request passed on waits first: a slow network
        self.in_flight = 0  # requests being answered (a killed client's may still be)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                with proxy.lock:
                    proxy.in_flight += 1
                try:
                    self._answer()
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    fault = next((f for f in proxy.faults if f.times > 0 and f.matches(self.command, self.path)), None)
                    if fault is not None:
                        fault.times -= 1
                if fault is not None:
                    proxy._record(self.command, self.path, fault.status)
                    self.send_response(fault.status)
                    for name, value in fault.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if proxy.latency:
                    time.sleep(proxy.latency)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                proxy._record(self.command, self.path, response.status)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, method: str, target: str, status: int) -> None:
        with self.lock:
            self.seen.append(Seen(method, target, status, time.monotonic()))

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no request is being answered: what a killed client left in flight is recorded before a reset."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.in_flight, f"{self.in_flight} requests still in flight after {timeout} s"

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.faults.clear()
            self.latency = 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Store:
    """One emulated service behind its proxy: what a test needs to upload, count and point pixsearch at it."""

    scheme: str  # "az" or "s3"
    proxy: CountingProxy
    env: dict[str, str]  # the environment pixsearch reads its credentials and endpoint from
    direct_port: int
    bucket: str = "photos"
    s3_keys: tuple[str, str] = ("testing", "testing")  # what uploads sign with (an IAM user's, when moto checks)

    def url(self, prefix: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{prefix}".rstrip("/")

    # -- uploads, straight to the emulator (not counted) ----------------------------------------------------------
    def client(self):
        if self.scheme == "az":
            from azure.storage.blob import BlobServiceClient

            return BlobServiceClient.from_connection_string(azurite_connection_string(self.direct_port))
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.direct_port}", region_name="us-east-1",
                            aws_access_key_id=self.s3_keys[0], aws_secret_access_key=self.s3_keys[1])

    def create_bucket(self) -> None:
        if self.scheme == "az":
            self.client().create_container(self.bucket)
        else:
            self.client().create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        if self.scheme == "az":
            self.client().get_blob_client(self.bucket, key).upload_blob(data, overwrite=True)
        else:
            self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        if self.scheme == "az":
            self.client().get_blob_client(self.bucket, key).delete_blob()
        else:
            self.client().delete_object(Bucket=self.bucket, Key=key)

    def rename(self, key: str, new_key: str) -> None:
        """How object stores rename: a server-side copy, then a delete."""
        if self.scheme == "az":
            source = self.client().get_blob_client(self.bucket, key)
            target = self.client().get_blob_client(self.bucket, new_key)
            target.start_copy_from_url(source.url, requires_sync=True)
            for _ in range(100):
                if target.get_blob_properties().copy.status == "success":
                    break
                time.sleep(0.1)
        else:
            self.client().copy_object(Bucket=self.bucket, Key=new_key, CopySource={"Bucket": self.bucket, "Key": key})
        self.delete(key)

    # -- what the proxy saw ---------------------------------------------------------------------------------------
    def object_reads(self, key_part: str = "") -> list[Seen]:
        """Requests that read an object's bytes (GET of a blob or key; listings are GETs of the container)."""
        reads = []
        for seen in list(self.proxy.seen):
            path = unquote(urlsplit(seen.target).path)
            parts = [p for p in path.split("/") if p]
            if self.scheme == "az" and parts[:1] == [AZURITE_ACCOUNT]:
                parts = parts[1:]
            if seen.method == "GET" and len(parts) >= 2 and parts[0] == self.bucket and key_part in path:
                reads.append(seen)
        return reads


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def azurite_connection_string(port: int, key: str = AZURITE_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


def azurite() -> Iterator[Store]:
    if not AZURITE.exists():
        raise RuntimeError(f"Azurite is not installed at {AZURITE}: run `make tools/azurite` (npm install azurite)")
    port = free_port()
    workspace = tempfile.mkdtemp(prefix="pixsearch-azurite-")
    process = subprocess.Popen([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                                workspace, "--skipApiVersionCheck", "--silent", "--loose"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        proxy = CountingProxy(port)
        try:
            yield Store("az", proxy, {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(proxy.port)}, port)
        finally:
            proxy.close()
    finally:
        _stop(process)
        shutil.rmtree(workspace, ignore_errors=True)


def moto_s3() -> Iterator[Store]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _wait_for_port(port)
        proxy = CountingProxy(port)
        try:
            yield Store("s3", proxy, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                      "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_REGION": "us-east-1",
                                      "AWS_EC2_METADATA_DISABLED": "true"}, port)
        finally:
            proxy.close()
    finally:
        server.stop()


# What moto_s3_with_iam does before authentication starts: CreateUser, PutUserPolicy, CreateAccessKey.
IAM_SETUP_ACTIONS = 3


def moto_s3_with_iam() -> Iterator[Store]:
    """moto's S3 server in its own process, checking every request's signature against IAM: the first
    IAM_SETUP_ACTIONS requests (INITIAL_NO_AUTH_ACTION_COUNT, in the server's environment) create an IAM user allowed
    s3:* and its access key through moto's IAM API; every request after that, the tests' uploads included, must be
    signed with that key's secret. The Store's env holds the real key."""
    import boto3

    port = free_port()
    exe = Path(os.environ.get("PIXSEARCH_MOTO_SERVER", Path(sys.executable).with_name("moto_server")))
    process = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                               env={**without_cloud_variables(os.environ),
                                    "INITIAL_NO_AUTH_ACTION_COUNT": str(IAM_SETUP_ACTIONS)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="pixsearch")
        iam.put_user_policy(UserName="pixsearch", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="pixsearch")["AccessKey"]
        proxy = CountingProxy(port)
        try:
            yield Store("s3", proxy, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                                      "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                                      "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_REGION": "us-east-1",
                                      "AWS_EC2_METADATA_DISABLED": "true"}, port,
                        s3_keys=(key["AccessKeyId"], key["SecretAccessKey"]))
        finally:
            proxy.close()
    finally:
        _stop(process)


# Every variable an object store client reads: the tests set exactly the ones they mean.
CLOUD_VARIABLES = re.compile(r"^(AZURE_STORAGE_|AWS_|AZURE_CLIENT_|AZURE_TENANT_)")


def without_cloud_variables(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not CLOUD_VARIABLES.match(k)}
