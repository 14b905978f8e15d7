"""A queued run's folder in an object store (issue 15, item 1): s3:// through s3fs, against a real S3 API
server (moto's, over HTTP on localhost), the way a user reaches MinIO or S3: credentials in AWS_* variables,
the endpoint in FSSPEC_S3_ENDPOINT_URL. What is in the bucket is read with boto3, not with fsspec.
"""
from __future__ import annotations

import socket

import boto3
import fsspec.config
import pytest
import sqlalchemy as sa
import torch
from moto.server import ThreadedMotoServer
from s3fs import S3FileSystem

from db import engine as db_engine
from db.models import Run
from dreamdpo.cli import main as cli
from dreamdpo.errors import UserError
from dreamdpo.storage import CHECKPOINT, RunStorage, check_reachable
from tests.conftest import NEWER_CHECKPOINT, checkpoint_round_trip

TINY = ["test_views=1", "test_resolution=32", "mesh_resolution=16", "schedule.resolution=32", "export_mesh=false"]


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """A fresh bucket; s3fs and boto3 pointed at the server as a user would point them at MinIO."""
    for key, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    # fsspec read FSSPEC_* at import: what a new process would do with the variable above
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_server})
    S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = request.node.name.lower().replace("_", "-")[:50].strip("-")
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    S3FileSystem.clear_instance_cache()


def keys(client, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_a_run_folder_in_a_bucket(s3, tmp_path, run_folder):
    client, bucket = s3
    checkpoint_round_trip(RunStorage(f"s3://{bucket}/queue/run-7"), run_folder, tmp_path)
    assert keys(client, bucket) == {"queue/run-7/checkpoints/last.pt", "queue/run-7/metrics.csv",
                                    "queue/run-7/turntable/frame_000.png"}  # no .lock, no temporary copy
    body = client.get_object(Bucket=bucket, Key="queue/run-7/checkpoints/last.pt")["Body"].read()
    assert body == NEWER_CHECKPOINT


def test_a_bucket_is_checked_before_anything_is_queued_and_never_created(s3, s3_server):
    client, bucket = s3
    check_reachable(f"s3://{bucket}/queue")
    assert keys(client, bucket) == set()  # the probe is removed
    with pytest.raises(UserError, match=r"storage URL s3://no-such-bucket/queue is unreachable") as e:
        check_reachable("s3://no-such-bucket/queue")
    assert "\n" not in str(e.value) and "test-secret" not in str(e.value)
    assert "no-such-bucket" not in {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_an_unreachable_endpoint_is_one_line(s3, monkeypatch):
    _, bucket = s3
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": closed, "config_kwargs": {
        "connect_timeout": 1, "retries": {"max_attempts": 1}}, "retries": 1})
    S3FileSystem.clear_instance_cache()
    with pytest.raises(UserError, match=rf"storage URL s3://{bucket}/queue is unreachable") as e:
        check_reachable(f"s3://{bucket}/queue")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_worker_runs_a_queued_run_into_a_bucket(s3, toy_prior, tmp_path, capsys):
    """`dreamdpo submit --storage s3://…` and `dreamdpo worker --once`: the finished run's checkpoint,
    metrics and turntable are in the bucket, the log points at them, and the checkpoint a resuming
    worker would fetch is the last step's."""
    client, bucket = s3
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    steps = 8
    assert cli(["submit", "--db", url, "--prompt", "a red cube", "--storage", f"s3://{bucket}/queue",
                f"steps={steps}", "checkpoint_every=4", *TINY]) == 0
    assert cli(["worker", "--db", url, "--once", "--scratch", str(tmp_path), "--poll-s", "0.2"]) == 0
    out = capsys.readouterr().out
    with db_engine.connect(url).connect() as conn:
        run_id, status, storage, metrics = conn.execute(sa.select(Run.id, Run.status, Run.storage, Run.metrics)).one()
    assert status == "finished", out
    prefix = f"queue/run-{run_id}/"
    assert storage == f"s3://{bucket}/{prefix[:-1]}"
    found = keys(client, bucket)
    assert {prefix + CHECKPOINT, prefix + "metrics.csv"} <= found, found
    assert any(k.startswith(prefix + "turntable/") and k.endswith(".png") for k in found), found
    assert not [k for k in found if ".part-" in k or k.endswith(".lock")], found
    outputs = (metrics or {}).get("outputs", {})  # the log names each output by its URL in the bucket
    assert outputs and all(v.startswith(f"s3://{bucket}/{prefix}") for v in outputs.values()), outputs
    for where in outputs.values():  # a file, or a folder (the turntable frames) of files
        key = where.split("/", 3)[3]
        assert key in found or any(k.startswith(key + "/") for k in found), where
    fetched = tmp_path / "fetched"
    assert RunStorage(storage).fetch_resume(fetched)
    state = torch.load(fetched / CHECKPOINT, weights_only=False)
    assert state["step"] == steps - 1 or state["step"] == steps, state.get("step")
