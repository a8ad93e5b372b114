"""Photos in object stores (issue 21), against real emulators: Azurite for Azure Blob Storage and moto's S3 server,
each behind a loopback proxy that counts requests and injects throttling. Every test runs on both services."""
from __future__ import annotations

import base64
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import noise_images
from hosted_fakes import FakeService, colour_photos, image_vector
from object_stores import (AZURITE_ACCOUNT, AZURITE_KEY, CLOUD_VARIABLES, Fault, azurite, azurite_connection_string,
                           moto_s3, moto_s3_with_iam)
from pixsearch.config import Settings
from pixsearch.ingest.scan import photo_id
from pixsearch.service import Engine
from pixsearch.service.roots import PhotoNotFound, read_stored_photo

PHOTOS = ["flower.jpg", "china-temple.jpg", "imagenet-11-630.jpg"]
SIDECAR_TITLE = "zanzibar lighthouse at dawn"


@pytest.fixture(scope="module", params=["az", "s3"])
def emulator(request):
    yield from (azurite() if request.param == "az" else moto_s3())


@pytest.fixture
def store(emulator, monkeypatch):
    """A fresh container/bucket on the emulator, and an environment holding exactly its credentials."""
    fresh = replace(emulator, bucket="b" + uuid.uuid4().hex[:12])
    fresh.create_bucket()
    fresh.proxy.reset()
    for name in list(os.environ):
        if CLOUD_VARIABLES.match(name):
            monkeypatch.delenv(name)
    for name, value in fresh.env.items():
        monkeypatch.setenv(name, value)
    return fresh


def _cli(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("pixsearch")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PIXSEARCH_HOME": str(home), **(env or {})})


def _report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _upload(store, samples: Path, prefix: str = "trip", names=PHOTOS) -> None:
    for name in names:
        store.put(f"{prefix}/{name}", (samples / name).read_bytes())


def _engine(home: Path, embedder) -> Engine:
    return Engine(Settings.load(home=home), embedder=embedder)


def _row(engine: Engine, index: str, url: str, columns=("path", "title", "content_hash")) -> dict | None:
    return engine.index(index).store.select([photo_id(url)], list(columns)).get(photo_id(url))


def test_index_search_thumbnail_regions_and_a_rerun_that_downloads_nothing(store, home, embedder, samples,
                                                                           index_name):
    _upload(store, samples)
    store.put("trip/flower.xmp", f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
                                 f'22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
                                 f'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{SIDECAR_TITLE}</rdf:li></rdf:Alt>'
                                 f'</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>'.encode())
    store.put("elsewhere/rocket.jpg", (samples / "rocket.jpg").read_bytes())  # not under the indexed prefix

    first = _cli(home, "index", store.url("trip"), "--index", index_name, "--regions", "grid-coarse", "--json")
    assert first.returncode == 0, first.stderr
    assert _report(first)["added"] == len(PHOTOS)
    assert "regions: " in first.stderr and f"in {len(PHOTOS)} photos" in first.stderr, first.stderr

    found = _cli(home, "search", "a flower", "--index", index_name, "--json")
    assert found.returncode == 0, found.stderr
    paths = {hit["path"] for hit in json.loads(found.stdout)}
    assert paths == {f"{store.url('trip')}/{name}" for name in PHOTOS}

    with _engine(home, embedder) as engine:
        assert _row(engine, index_name, store.url("trip/flower.jpg"))["title"] == SIDECAR_TITLE
        # every object URL holds a "//": none may be taken for a misspelled local path (each run would read them all)
        assert engine.index(index_name).store.paths_not_normal() == []
        from pixsearch.api import create_app
        from pixsearch.api.server import serving_in_thread

        with serving_in_thread(create_app(engine, admin_keys=["admin-k"], query_keys=["query-k"])) as base:
            key = photo_id(store.url("trip/china-temple.jpg"))
            response = httpx.get(f"{base}/thumbnails/{key}", params={"index": index_name, "size": 256},
                                 headers={"api-key": "query-k"}, timeout=60)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/webp" and response.content[:4] == b"RIFF"
        # the server reads only objects under the index's recorded roots, never one a row (or client) names
        store.proxy.reset()
        with pytest.raises(PhotoNotFound):
            read_stored_photo(engine.index(index_name), store.url("elsewhere/rocket.jpg"))
        with pytest.raises(PhotoNotFound):
            read_stored_photo(engine.index(index_name), store.url("trip/../elsewhere/rocket.jpg"))
        assert store.proxy.seen == []

    store.proxy.reset()
    again = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert again.returncode == 0, again.stderr
    report = _report(again)
    assert (report["unchanged"], report["added"], report["updated"]) == (len(PHOTOS), 0, 0)
    assert store.proxy.seen, "the rerun must have listed the prefix through the proxy"
    assert store.object_reads() == [], [s.target for s in store.object_reads()]


def test_a_changed_object_is_embedded_again_a_deleted_one_pruned_a_renamed_one_moved_without_a_download(
        store, home, embedder, samples, index_name):
    _upload(store, samples)
    assert _cli(home, "index", store.url("trip"), "--index", index_name).returncode == 0
    with _engine(home, embedder) as engine:
        vector = engine.index(index_name).spec.vector_fields[0].name
        before = _row(engine, index_name, store.url("trip/imagenet-11-630.jpg"), (vector, "content_hash"))

    store.put("trip/flower.jpg", (samples / "rocket.jpg").read_bytes())  # changed in place
    store.delete("trip/china-temple.jpg")
    store.rename("trip/imagenet-11-630.jpg", "trip/renamed/dog.jpg")
    store.proxy.reset()
    proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert proc.returncode == 0, proc.stderr
    report = _report(proc)
    assert (report["updated"], report["removed"], report["moved"], report["added"]) == (1, 1, 1, 0), report
    assert store.object_reads("renamed/dog.jpg") == []  # recognised by the MD5 the listing states
    assert len(store.object_reads("flower.jpg")) == 1

    with _engine(home, embedder) as engine:
        moved = _row(engine, index_name, store.url("trip/renamed/dog.jpg"), (vector, "content_hash", "path"))
        assert moved["path"] == store.url("trip/renamed/dog.jpg")
        assert moved["content_hash"] == before["content_hash"]
        assert np.array_equal(np.asarray(moved[vector]), np.asarray(before[vector]))
        assert _row(engine, index_name, store.url("trip/imagenet-11-630.jpg")) is None
        assert _row(engine, index_name, store.url("trip/china-temple.jpg")) is None


def test_a_corrupt_object_fails_alone_and_throttling_is_retried_as_retry_after_asks(store, home, samples,
                                                                                    index_name):
    _upload(store, samples)
    store.put("trip/broken.jpg", b"this is not a JPEG at all" * 10)

    def object_get(name):
        return lambda method, target: method == "GET" and target.split("?")[0].endswith("/" + name)

    def listing(method, target):
        return method == "GET" and ("comp=list" in target or "list-type=2" in target)

    store.proxy.faults += [
        Fault(listing, 503, 1, {"Retry-After": "0"}),
        Fault(object_get("flower.jpg"), 429, 2, {"Retry-After": "1"}),
        Fault(object_get("china-temple.jpg"), 503, 99, {"Retry-After": "0"}),  # never recovers in this run
    ]
    proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert proc.returncode == 3, proc.stderr  # some files failed, the run went on
    report = _report(proc)
    failed = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in report["failed"]}
    assert set(failed) == {"broken.jpg", "china-temple.jpg"}, report
    assert "503" in failed["china-temple.jpg"]
    assert report["added"] == 2

    flower = store.object_reads("flower.jpg")
    assert [s.status for s in flower][:2] == [429, 429] and len(flower) == 3 and flower[2].status in (200, 206)
    assert all(later.at - earlier.at >= 0.9 for earlier, later in zip(flower, flower[1:]))  # Retry-After: 1 honoured
    assert len(store.object_reads("china-temple.jpg")) == 5  # RetryPolicy.attempts, then a per-object failure

    store.proxy.reset()  # the service is fine again: the next run picks up what failed
    proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    report = _report(proc)
    assert report["added"] == 1 and [f["path"].rsplit("/", 1)[-1] for f in report["failed"]] == ["broken.jpg"]


@pytest.mark.parametrize("problem", ["wrong", "missing"])
def test_a_wrong_or_missing_credential_is_one_clear_error_naming_the_variable_and_no_secret_leaks(
        store, home, embedder, samples, index_name, problem, monkeypatch, tmp_path):
    _upload(store, samples, names=PHOTOS[:1])
    secrets = []
    if store.scheme == "az":
        variable = "AZURE_STORAGE_CONNECTION_STRING"
        if problem == "wrong":
            wrong_key = AZURITE_KEY[:10] + ("A" if AZURITE_KEY[10] != "A" else "B") + AZURITE_KEY[11:]
            monkeypatch.setenv(variable, azurite_connection_string(store.proxy.port, wrong_key))
            secrets = [wrong_key, AZURITE_KEY]
        else:
            monkeypatch.delenv(variable)
    else:
        if problem == "wrong":
            pytest.skip("this moto server accepts any credentials: a wrong S3 secret is tested against IAM "
                        "authentication in test_key_credentials_index_and_a_wrong_secret_is_one_error_that_never_shows_it")
        variable = "AWS_ACCESS_KEY_ID"
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))

    proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and variable in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    for secret in secrets:
        assert secret not in proc.stderr and secret not in proc.stdout
    with _engine(home, embedder) as engine:
        settings = json.dumps(engine.index(index_name).spec.settings)
        assert store.url("trip") in settings  # the root, by its URL only
        for secret in secrets:
            assert secret not in settings
        assert engine.index(index_name).store.count() == 0


@pytest.fixture(params=["s3-iam", "az-account-key"])
def keyed_store(request, monkeypatch):
    """A service that checks a secret, and the environment naming it the way a deployment would: an IAM user's
    access key against moto's S3 server with IAM authentication on; Azurite's account name and key with the blob
    endpoint from AZURE_STORAGE_SERVICE_ENDPOINT (the az CLI's variable), not a connection string."""
    emulator = moto_s3_with_iam() if request.param == "s3-iam" else azurite()
    store = next(emulator)
    try:
        store.create_bucket()
        for name in list(os.environ):
            if CLOUD_VARIABLES.match(name):
                monkeypatch.delenv(name)
        if store.scheme == "s3":
            env = store.env
        else:
            env = {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
                   "AZURE_STORAGE_SERVICE_ENDPOINT": f"http://127.0.0.1:{store.proxy.port}/{AZURITE_ACCOUNT}"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield store
    finally:
        emulator.close()


def _database_text(engine: Engine) -> str:
    """Every row of every table of pixsearch's schema, as text."""
    with engine.db.connection() as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = current_schema()")]
        return "\n".join(repr(conn.execute(f"SELECT * FROM {table}").fetchall()) for table in tables)


def test_key_credentials_index_and_a_wrong_secret_is_one_error_that_never_shows_it(
        keyed_store, home, embedder, samples, index_name, monkeypatch, caplog):
    from pixsearch.sources import CredentialsError

    store = keyed_store
    _upload(store, samples, names=PHOTOS[:1])
    if store.scheme == "s3":
        variables, secret_variable = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY"
        wrong = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    else:
        variables, secret_variable = ["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"], \
            "AZURE_STORAGE_ACCOUNT_KEY"
        wrong = base64.b64encode(os.urandom(64)).decode()  # a key of the right form, not the account's
    right = os.environ[secret_variable]

    good = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert good.returncode == 0, good.stderr
    assert _report(good)["added"] == 1
    assert right not in good.stdout + good.stderr

    monkeypatch.setenv(secret_variable, wrong)
    store.proxy.reset()
    proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert store.proxy.seen and {seen.status for seen in store.proxy.seen} == {403}  # the service refused the secret
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    assert all(variable in lines[0] for variable in variables), lines[0]
    assert "refused" in lines[0]

    caplog.set_level(logging.DEBUG)  # every library's log records, botocore's and the Azure SDK's included
    with _engine(home, embedder) as engine:
        with pytest.raises(CredentialsError) as raised:
            engine.index(index_name).add_paths([store.url("trip")])
        assert all(variable in str(raised.value) for variable in variables)
        assert caplog.records  # the libraries did log: what they logged was looked at
        database = _database_text(engine)
        assert store.url("trip") in database and _row(engine, index_name, store.url(f"trip/{PHOTOS[0]}"))
    for secret in (wrong, right):
        for text in (proc.stdout, proc.stderr, str(raised.value), caplog.text, database):
            assert secret not in text


def test_a_killed_run_resumes_without_downloading_what_it_wrote(store, home, embedder, index_name, tmp_path):
    count = 40
    for path in noise_images(tmp_path / "noise", count, 48, 48, seed=21):
        store.put(f"trip/{path.name}", path.read_bytes())
    urls = {store.url(f"trip/p{i:03d}.png") for i in range(count)}
    store.proxy.latency = 0.3  # a slow network, so that the run is killed between batches
    exe = Path(sys.executable).with_name("pixsearch")
    log = tmp_path / "killed-run.log"
    with _engine(home, embedder) as engine:
        engine.list_indexes()  # the database is set up before the run starts, not by both at once
        proc = subprocess.Popen([str(exe), "index", store.url("trip"), "--index", index_name, "--json"],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PIXSEARCH_HOME": str(home), "PIXSEARCH_BATCH_SIZE": "4",
                                     "PIXSEARCH_DOWNLOAD_CONCURRENCY": "2"})
        try:
            while proc.poll() is None and not _written(engine, index_name, urls):
                time.sleep(0.05)  # poll: the first batch written is what is waited for, however long it takes
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            written = _written(engine, index_name, urls)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert 0 < len(written) < count, (f"the run was to be killed mid-way: {len(written)} of {count} written",
                                      log.read_text())

    store.proxy.wait_idle()  # the killed run's last downloads are not the rerun's
    store.proxy.reset()
    again = _cli(home, "index", store.url("trip"), "--index", index_name, "--json")
    assert again.returncode == 0, again.stderr
    report = _report(again)
    assert (report["unchanged"], report["added"], report["failed"]) == (len(written), count - len(written), [])
    reads = {url: len(store.object_reads(url.split("/", 3)[3])) for url in urls}
    assert {url: n for url, n in reads.items() if url in written and n} == {}  # nothing written is read again
    assert {url: n for url, n in reads.items() if url not in written and n != 1} == {}  # the rest: once each
    with _engine(home, embedder) as engine:
        assert _written(engine, index_name, urls) == urls and engine.index(index_name).store.count() == count


def _written(engine: Engine, index: str, urls: set[str]) -> set[str]:
    """Which of these objects have a row (none while the index is not yet created)."""
    if index not in {spec.name for spec in engine.list_indexes()}:
        return set()
    rows = engine.index(index).store.select([photo_id(url) for url in urls], ["path"])
    return {row["path"] for row in rows.values()}


VISION_KEY = "az-" + uuid.uuid4().hex


def test_a_hosted_model_is_given_a_short_lived_read_only_url_of_each_object_photo_that_shows_nowhere(
        store, home, embedder, index_name, tmp_path):
    from urllib.parse import parse_qs, urlsplit

    colours = colour_photos(tmp_path / "p", names=("red", "blue"))
    for colour, path in colours.items():
        store.put(f"trip/{colour}.png", Path(path).read_bytes())
    with FakeService(azure_key=VISION_KEY) as vision:
        model = f"azure-vision:{vision.url}"
        plain = _cli(home, "index", store.url("trip"), "--index", index_name + "-bytes", "--model", model,
                     env={"AZURE_AI_VISION_KEY": VISION_KEY})  # send_photo_urls is off by default: bytes are sent
        assert plain.returncode == 0, plain.stderr
        assert {r.headers["content-type"] for r in vision.requests} == {"application/octet-stream"}
        assert vision.fetched == []

        vision.requests.clear()
        store.proxy.reset()
        proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--model", model, "--json",
                    env={"AZURE_AI_VISION_KEY": VISION_KEY, "PIXSEARCH_SEND_PHOTO_URLS": "true"})
        assert proc.returncode == 0, proc.stderr
        assert _report(proc)["added"] == 2
        sent = [r.json()["url"] for r in vision.requests_to("vectorizeImage")]
        assert all(r.headers["content-type"] == "application/json" for r in vision.requests_to("vectorizeImage"))
        assert sorted(vision.fetched) == sorted(sent) and len(sent) == 2
    signatures = []
    for url in sent:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert parts.netloc == f"127.0.0.1:{store.proxy.port}"  # fetched from the store, through the proxy
        if store.scheme == "az":
            assert query["sp"] == ["r"] and "sig" in query  # a read-only SAS
            lifetime = datetime.fromisoformat(query["se"][0].replace("Z", "+00:00")) - datetime.now(timezone.utc)
            signatures.append(query["sig"][0])
        else:
            assert "X-Amz-Signature" in query  # a presigned GET
            lifetime = timedelta(seconds=int(query["X-Amz-Expires"][0]))
            signatures.append(query["X-Amz-Signature"][0])
        assert timedelta(minutes=50) < lifetime <= timedelta(hours=1)
    # the service read each photo from the store with its URL (the emulator checked the signature)
    fetched = [seen for seen in store.object_reads() if "sig=" in seen.target or "X-Amz-Signature=" in seen.target]
    assert sorted(seen.status for seen in fetched) == [200, 200]

    with _engine(home, embedder) as engine:
        index = engine.index(index_name)
        vectors, keys = index.all_vectors("azure_vision")
        by_path = {_row(engine, index_name, store.url(f"trip/{c}.png"))["path"]: c for c in colours}
        paths = {key: row["path"] for key, row in index.store.select(keys, ["path"]).items()}
        for key, vector in zip(keys, vectors):  # each photo holds the vector of the photo fetched by its URL
            expected = image_vector(by_path[paths[key]])
            assert np.allclose(vector, expected / np.linalg.norm(expected), atol=1e-6)
        database = _database_text(engine)
    for signature in signatures:
        for text in (proc.stdout, proc.stderr, database):  # the run's output, --json, log lines (stderr), rows
            assert signature not in text


def test_a_signed_photo_url_is_scrubbed_from_what_a_hosted_service_says():
    from pixsearch.models.hosted import HostedOptions, ServiceClient

    client = ServiceClient("Azure AI Vision", "http://127.0.0.1:9", {}, HostedOptions(), secrets=[VISION_KEY])
    try:
        for url in ("http://127.0.0.1:10000/devstoreaccount1/c/a%20b.jpg?se=2026-01-01T00%3A00%3A00Z&sp=r&sv=2025"
                    "-01-05&sr=b&sig=SECRETsig%2Bvalue%3D",
                    "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026"
                    "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=SECRETsig"):
            said = client.scrub(f'InvalidImageUrl: cannot fetch "{url}" (403), key {VISION_KEY}')
            assert "SECRET" not in said and "AKIA" not in said and VISION_KEY not in said, said
            assert url.split("?")[0] in said  # which photo it was is still said
    finally:
        client.close()


def test_dry_run_on_object_urls_lists_reads_nothing_and_counts_the_caption_requests(store, home, samples, index_name):
    _upload(store, samples)
    store.put("trip/copy-of-flower.jpg", (samples / "flower.jpg").read_bytes())  # one content, two photos
    openai_key = "sk-" + uuid.uuid4().hex
    with FakeService(openai_key=openai_key) as service:
        env = {"OPENAI_API_KEY": openai_key, "OPENAI_BASE_URL": service.url + "/v1"}

        def dry_run(*args: str) -> dict:
            proc = _cli(home, "index", store.url("trip"), "--index", index_name, "--dry-run", "--json", *args, env=env)
            assert proc.returncode == 0, proc.stderr
            assert "(dry run)" in proc.stderr
            return json.loads(proc.stdout)

        plan = dry_run()
        assert (plan["files"], plan["to_embed"], plan["exists"]) == (4, 4, False)
        assert (plan["captioner"], plan["caption_requests"]) == (None, 0)
        plan = dry_run("--captioner", "openai:vision-model")
        assert (plan["captioner"], plan["caption_requests"]) == ("openai:vision-model", 3)  # distinct contents
        assert plan["caption_service"] == service.url.removeprefix("http://")
        assert store.object_reads() == [] and service.requests == []  # listed only: nothing read, nothing sent

        run = _cli(home, "index", store.url("trip"), "--index", index_name, "--captioner", "openai:vision-model",
                   "--json", env=env)
        assert run.returncode == 0, run.stderr
        assert len(service.requests_to("/chat/completions")) == 3, run.stdout  # what the dry run said

        store.put("trip/later.jpg", (samples / "rocket.jpg").read_bytes())
        store.put("trip/flower-again.jpg", (samples / "flower.jpg").read_bytes())  # its caption is in the cache
        store.proxy.reset()
        plan = dry_run()  # the index's own captioner, remembered
        assert (plan["to_embed"], plan["unchanged"], plan["captioner"], plan["caption_requests"]) == (
            2, 4, "openai:vision-model", 1)
        assert dry_run("--caption-prompt", "Name the colours only.")["caption_requests"] == 4  # new settings: all
        assert dry_run("--no-captioner")["caption_requests"] == 0
        store.delete("trip/china-temple.jpg")  # pruned by the run: never captioned
        assert dry_run("--caption-prompt", "Name the colours only.")["caption_requests"] == 3
        assert store.object_reads() == [] and len(service.requests_to("/chat/completions")) == 3


def test_python_api_indexes_object_store_and_folder_together(store, home, embedder, samples, tmp_path):
    from pixsearch.client import Client

    _upload(store, samples, names=PHOTOS[:2])
    local = tmp_path / "local"
    local.mkdir()
    (local / "rocket.jpg").write_bytes((samples / "rocket.jpg").read_bytes())
    with _engine(home, embedder) as engine:
        photos = Client(engine).create_index("py-" + uuid.uuid4().hex[:8])
        ids = photos.add_images([store.url("trip"), str(local)])
        assert len(ids) == 3
        hits = photos.search("a rocket", k=3)
        assert {hit.fields["path"] for hit in hits} == {f"{store.url('trip')}/{n}" for n in PHOTOS[:2]} | {
            str(local / "rocket.jpg")}


def test_watch_lists_the_prefix_again_every_interval(store, home, samples, index_name):
    _upload(store, samples, names=PHOTOS[:1])
    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "index", store.url("trip"), "--index", index_name, "--watch", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PIXSEARCH_HOME": str(home), "PIXSEARCH_WATCH_INTERVAL": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_report() -> dict:
        try:
            return json.loads(lines.get(timeout=120))
        except queue.Empty:
            raise AssertionError("no report from the watcher: " + proc.stderr.read() if proc.poll() is not None
                                 else "no report from the watcher") from None

    try:
        assert next_report()["added"] == 1
        store.put("trip/later.jpg", (samples / "rocket.jpg").read_bytes())
        assert next_report()["added"] == 1  # the next listing found it
        store.delete("trip/later.jpg")
        assert next_report()["removed"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def test_faces_are_found_in_object_store_photos(store, home, embedder, index_name):
    """Faces (issue 23) on object photos: the face pass reads them through the stored roots, like thumbnails."""
    import io

    from face_photos import face_set

    composed = [photo for photo in face_set() if len(photo.faces) >= 2][:3]
    for photo in composed:
        buffer = io.BytesIO()
        photo.image.save(buffer, format="JPEG", quality=92)  # upright: the boxes are the truth as composed
        store.put(f"people/{photo.name}", buffer.getvalue())
    with _engine(home, embedder) as engine:
        index = engine.index(index_name, create=True)
        report = index.add_paths([store.url("people")], faces=True)
        assert report.faces is not None and not [w for w in report.warnings if "faces not searched" in w[1]]
        for photo in composed:
            found = index.photo_faces(photo_id(f"{store.url('people')}/{photo.name}"))
            assert len(found) == len(photo.faces), photo.name
        assert index.people()


def test_the_store_knows_every_scheme_an_object_url_is_stored_under():
    """store/ may not import sources/: its patterns for object URLs (kept out of the misspelled-path lookup) must
    follow every scheme sources/urls.py stores."""
    from pixsearch.sources.urls import SCHEMES
    from pixsearch.store.photos import OBJECT_URLS

    assert {pattern.removesuffix("://%") for pattern in OBJECT_URLS} == set(SCHEMES.values())
