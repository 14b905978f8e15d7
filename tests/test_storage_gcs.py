"""A queued run's folder in Google Cloud Storage (issue 15, item 1): gs:// through gcsfs, against a real GCS
JSON API server on localhost (gcp-storage-emulator's), the way a user reaches an emulator: its address in
STORAGE_EMULATOR_HOST. What is in the bucket is read over the server's HTTP API, not with fsspec.
"""
from __future__ import annotations

import os

# gcsfs asks a gRPC service at import whether a bucket is hierarchical; emulators have no such service
# (a 60 s time-out per bucket). Read when gcsfs is imported, so set before it is.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec.config  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from gcp_storage_emulator.server import Server  # noqa: E402
from gcsfs import GCSFileSystem  # noqa: E402

from dreamdpo.errors import UserError  # noqa: E402
from dreamdpo.storage import RunStorage, check_reachable  # noqa: E402
from tests.conftest import NEWER_CHECKPOINT, checkpoint_round_trip  # noqa: E402


@pytest.fixture(scope="module")
def gcs_server():
    server = Server("127.0.0.1", 0, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    server.stop()


@pytest.fixture
def gcs(gcs_server, monkeypatch, request):
    """A fresh bucket; gcsfs pointed at the server as at any emulator, with no credentials."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    GCSFileSystem.clear_instance_cache()
    bucket = request.node.name.lower().replace("_", "-")[:50].strip("-")
    r = requests.post(f"{gcs_server}/storage/v1/b", params={"project": "test"}, json={"name": bucket}, timeout=30)
    assert r.status_code == 200, r.text
    yield gcs_server, bucket
    GCSFileSystem.clear_instance_cache()


def objects(server: str, bucket: str) -> dict[str, int]:
    """Name → size of every object in the bucket, from the server's JSON API."""
    r = requests.get(f"{server}/storage/v1/b/{bucket}/o", timeout=30)
    r.raise_for_status()
    return {o["name"]: int(o["size"]) for o in r.json().get("items", [])}


def test_a_run_folder_in_a_gcs_bucket(gcs, tmp_path, run_folder):
    server, bucket = gcs
    checkpoint_round_trip(RunStorage(f"gs://{bucket}/queue/run-7"), run_folder, tmp_path)
    found = objects(server, bucket)
    assert set(found) == {"queue/run-7/checkpoints/last.pt", "queue/run-7/metrics.csv",
                          "queue/run-7/turntable/frame_000.png"}  # no .lock, no temporary copy
    assert found["queue/run-7/checkpoints/last.pt"] == len(NEWER_CHECKPOINT)
    body = requests.get(f"{server}/download/storage/v1/b/{bucket}/o/queue%2Frun-7%2Fcheckpoints%2Flast.pt",
                        params={"alt": "media"}, timeout=30)
    assert body.content == NEWER_CHECKPOINT


def test_a_gcs_bucket_is_checked_and_never_created(gcs):
    server, bucket = gcs
    check_reachable(f"gs://{bucket}/queue")
    assert objects(server, bucket) == {}  # the probe is removed
    with pytest.raises(UserError, match=r"storage URL gs://no-such-bucket/queue is unreachable") as e:
        check_reachable("gs://no-such-bucket/queue")
    assert "\n" not in str(e.value)
    listed = requests.get(f"{server}/storage/v1/b", params={"project": "test"}, timeout=30).json()
    assert "no-such-bucket" not in {b["name"] for b in listed.get("items", [])}
