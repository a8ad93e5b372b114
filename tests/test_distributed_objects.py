"""`pixsearch index az://... --ray ADDRESS`: photos in an object store (Azurite), embedded on a real local 2-node Ray
cluster whose workers read them with the credentials of the environment their nodes were started with — against a
local run of the same container. One cluster and one emulator for the module, a few photos."""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import replace

import pytest

from conftest import run_cli
from helpers import broken_files, noise_images, xmp_packet
from object_stores import CLOUD_VARIABLES, azurite, moto_s3, without_cloud_variables
from pixsearch.config import Settings
from pixsearch.ingest.distributed import ClusterError
from pixsearch.service import Engine
from ray_cluster import LocalRayCluster
from test_distributed import (NODE_ENV, KillOnFirstWrite, _rows, _without_times, _work_of_nodes,
                              assert_every_file_once, assert_same_rows)

PHOTOS = ["flower.jpg", "china-temple.jpg", "imagenet-11-630.jpg", "rocket.jpg"]
NO_AWS_FILES = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/pixsearch-test", "AWS_CONFIG_FILE":
                "/nonexistent/pixsearch-test", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def azure_store(samples, tmp_path_factory):
    """An Azurite container holding a few photos (one with an XMP sidecar) and three files that cannot be decoded."""
    for store in azurite():
        store = replace(store, bucket="ray" + uuid.uuid4().hex[:10])
        store.create_bucket()
        for name in PHOTOS:
            store.put(f"trip/{name}", (samples / name).read_bytes())
        store.put("trip/flower.xmp", xmp_packet(title="Harbour at dawn", description="boats", subjects=("sea",)))
        for path in broken_files(tmp_path_factory.mktemp("broken")).values():
            store.put(f"trip/broken/{path.name}", path.read_bytes())
        yield store


@pytest.fixture(scope="module")
def object_cluster(azure_store):
    """Both nodes started with the container's connection string in their environment, and no AWS credentials."""
    env = {**NODE_ENV, **azure_store.env, **NO_AWS_FILES}
    with LocalRayCluster(nodes=2, env=env, base_env=without_cloud_variables(dict(os.environ))) as cluster:
        yield cluster


@pytest.fixture
def cloud_env(monkeypatch):
    """This process's environment with no object store credentials but those a test sets."""
    for name in list(os.environ):
        if CLOUD_VARIABLES.match(name):
            monkeypatch.delenv(name)
    for name, value in NO_AWS_FILES.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_a_container_indexed_on_the_cluster_is_what_a_local_run_gives(engine, azure_store, object_cluster, home,
                                                                      index_name, cloud_env):
    for name, value in azure_store.env.items():
        cloud_env.setenv(name, value)
    url = azure_store.url("trip")
    local = engine.index(index_name + "-local", create=True).add_paths([url])
    assert local.added == len(PHOTOS) and len(local.failed) == 3
    azure_store.proxy.reset()
    done = run_cli("index", url, "--index", index_name, "--ray", object_cluster.address, "--json", home=home)
    assert done.returncode == 3, done.stderr  # some files failed: the same exit status as a local run's
    assert _without_times(json.loads(done.stdout)) == _without_times(local.to_json())
    assert len(azure_store.object_reads("trip/")) >= len(PHOTOS) + 3  # every object read (by the workers)
    here, there = _rows(engine, index_name + "-local", url), _rows(engine, index_name, url)
    assert here.keys() == there.keys() and len(here) == len(PHOTOS)
    assert_same_rows(here, there, [vf.name for vf in engine.index(index_name).spec.vector_fields])
    assert any(row.get("title") == "Harbour at dawn" for row in there.values())  # the sidecar read on a worker
    again = run_cli("index", url, "--index", index_name, "--ray", object_cluster.address, "--json", home=home)
    assert json.loads(again.stdout)["added"] == 0 and json.loads(again.stdout)["unchanged"] == len(PHOTOS)


def test_a_node_dying_mid_run_on_a_container_still_ends_with_every_photo_once(home, embedder, azure_store, tmp_path,
                                                                             index_name, cloud_env):
    for path in noise_images(tmp_path / "noise", 48, 120, 160, seed=7):
        azure_store.put(f"many/{path.name}", path.read_bytes())
    for name, value in azure_store.env.items():
        cloud_env.setenv(name, value)
    env = {**NODE_ENV, **azure_store.env, **NO_AWS_FILES}
    with LocalRayCluster(nodes=2, env=env, base_env=without_cloud_variables(dict(os.environ))) as cluster, \
            Engine(Settings.load(home=home, batch_size=4), embedder=embedder) as engine:
        progress = KillOnFirstWrite(cluster.started[1])
        report = engine.index(index_name, create=True).add_paths([azure_store.url("many")], ray=cluster.address,
                                                                 progress=progress)
        assert progress.killed and progress.done == 48
        assert (report.added, report.failed) == (48, [])
        assert_every_file_once(engine, index_name, 48)


def test_nodes_without_the_credentials_are_one_error_naming_each_node_and_the_variable(
        home, embedder, object_cluster, samples, index_name, cloud_env):
    """ray_reads workers: the driver can read the bucket; the nodes were started without AWS credentials (and Ray
    does not pass the driver's environment on): refused before any work, the driver's secret in no message."""
    secret = "driver-only-secret-" + uuid.uuid4().hex[:8]
    for store in moto_s3():
        store.create_bucket()
        store.put("trip/flower.jpg", (samples / "flower.jpg").read_bytes())
        for name, value in {**store.env, "AWS_SECRET_ACCESS_KEY": secret}.items():
            cloud_env.setenv(name, value)
        with Engine(Settings.load(home=home, ray_reads="workers"), embedder=embedder) as engine:
            with pytest.raises(ClusterError) as refused:
                engine.index(index_name, create=True).add_paths([store.url("trip")], ray=object_cluster.address)
            assert engine.index(index_name).count() == 0
        assert not store.object_reads()  # nothing was read
    message = str(refused.value)
    problems = message.splitlines()[1:]
    assert len(problems) == 2 and len({p.split(":")[0] for p in problems}) == 2, message  # each node, once
    for problem in problems:
        assert f"cannot list {store.url('trip')}" in problem and "AWS_ACCESS_KEY_ID" in problem, message
    assert secret not in message and "testing" not in message


def test_nodes_without_the_credentials_get_the_photos_from_the_driver(home, embedder, object_cluster, samples,
                                                                      index_name, cloud_env, caplog):
    """ray_reads auto (the default): the same nodes embed the photos the driver reads with its credentials and
    sends through Ray's object store; one warning per node names the variable, no message the secret."""
    secret = "driver-only-secret-" + uuid.uuid4().hex[:8]
    caplog.set_level(logging.INFO)
    for store in moto_s3():
        store.create_bucket()
        for name in PHOTOS:
            store.put(f"trip/{name}", (samples / name).read_bytes())
        store.put("trip/flower.txt", b"a flower, described beside it")
        for name, value in {**store.env, "AWS_SECRET_ACCESS_KEY": secret}.items():
            cloud_env.setenv(name, value)
        with Engine(Settings.load(home=home, batch_size=2), embedder=embedder) as engine:  # a batch for each node
            local = engine.index(index_name + "-local", create=True).add_paths([store.url("trip")])
            reads_before = len(store.object_reads("trip/"))
            there = engine.index(index_name, create=True).add_paths([store.url("trip")], ray=object_cluster.address)
            assert _without_times(there.to_json()) == _without_times(local.to_json()) and there.added == len(PHOTOS)
            assert len(store.object_reads("trip/")) - reads_before >= len(PHOTOS) + 1  # photos, sidecar: the driver
            here_rows = _rows(engine, index_name + "-local", store.url("trip"))
            there_rows = _rows(engine, index_name, store.url("trip"))
            fields = [vf.name for vf in engine.index(index_name).spec.vector_fields]
    assert here_rows.keys() == there_rows.keys() and len(there_rows) == len(PHOTOS)
    assert_same_rows(here_rows, there_rows, fields)
    assert any(row.get("description") == "a flower, described beside it" for row in there_rows.values())
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "cannot list" in r.getMessage()]
    assert len(warned) == 2 and all("AWS_ACCESS_KEY_ID" in w and "object store" in w for w in warned), warned
    assert not any(secret in r.getMessage() for r in caplog.records)
    work = _work_of_nodes(caplog)
    assert len(work) == 2 and all(batches >= 1 and sent == batches for batches, sent in work.values()), work
