"""A queued run's folder at a storage URL that every worker reaches (fsspec).

`file:///shared/dreamdpo` on a shared file system; `s3://bucket/prefix`, `gs://bucket/prefix` for users
who have an object store (fsspec's protocol packages: `pip install dreamdpo[s3]` for s3fs, `dreamdpo[gcs]`
for gcsfs); `memory://` only inside one process (unit tests). Credentials come from the store's own
environment variables (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for S3, GOOGLE_APPLICATION_CREDENTIALS for
GCS), never from the URL or the log; an S3-compatible server (MinIO, Ceph) is reached with
FSSPEC_S3_ENDPOINT_URL=http://host:9000, a GCS emulator with STORAGE_EMULATOR_HOST=http://host:port (and
GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: emulators lack the gRPC service gcsfs asks about bucket types).
A worker works in a local scratch folder and copies the checkpoint (with metrics.csv)
to the URL after each checkpoint, and the whole folder (turntable, mesh) when the run finishes; a
worker that resumes the run fetches them first. A worker killed mid-copy never leaves a half-written
checkpoint: on a file system each file is written under a temporary name and renamed, and an object
store's upload is atomic by itself.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from dreamdpo.errors import UserError

CHECKPOINT = "checkpoints/last.pt"
RESUME_FILES = (CHECKPOINT, "metrics.csv")  # what a resumed run needs from the previous holder
LOCAL_ONLY = (".lock",)  # never copied: the folder lock of the worker's own process


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _open(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # s3:// without s3fs, gs:// without gcsfs
        raise UserError(f"storage URL {url} needs a package that is not installed ({_one_line(e)})") from None
    except (ValueError, TypeError) as e:  # an unknown protocol, a malformed URL
        raise UserError(f"storage URL {url!r} cannot be used ({_one_line(e)}); "
                        "give e.g. file:///shared/dreamdpo-runs or s3://bucket/prefix") from None


class RunStorage:
    """One run's folder at a storage URL."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = _open(self.url)
        self.root = self.root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._path(rel)))

    def put_file(self, local: Path, rel: str) -> None:
        """Copy a local file to rel, atomically: a reader sees the old file or the new one, whole. An object
        store's upload is atomic already (the object appears when the upload completes), so it is written in
        place there; a file system gets a temporary name and a rename (a move on an object store would be a
        second copy of the checkpoint)."""
        from fsspec.implementations.local import LocalFileSystem

        final = self._path(rel)
        if not isinstance(self.fs, LocalFileSystem):
            self.fs.put_file(str(local), final)
            return
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        part = f"{final}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.put_file(str(local), part)
            self.fs.mv(part, final)
        finally:
            if self.fs.exists(part):
                self.fs.rm(part)

    def get_file(self, rel: str, local: Path) -> bool:
        """Fetch rel into a local file; False when the storage has no such file."""
        if not self.exists(rel):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._path(rel), str(local))
        return True

    def put_tree(self, local_dir: Path) -> None:
        """Copy every file of a local folder (the finished run: turntable, mesh, config, metrics)."""
        for path in sorted(local_dir.rglob("*")):
            if path.is_file() and path.name not in LOCAL_ONLY and not path.name.endswith(".tmp"):
                self.put_file(path, path.relative_to(local_dir).as_posix())

    def fetch_resume(self, local_dir: Path) -> bool:
        """The files a resumed run needs, into its local folder. True when there is a checkpoint."""
        if not self.get_file(CHECKPOINT, local_dir / CHECKPOINT):
            return False
        for rel in RESUME_FILES[1:]:
            self.get_file(rel, local_dir / rel)
        return True


def check_reachable(url: str) -> None:
    """Refuse, in one line, a storage URL that workers cannot write: its folder is created and a probe
    file written and removed. memory:// is refused too: it lives inside one process."""
    if "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; give e.g. file:///shared/dreamdpo-runs "
                        "(a folder every worker reaches) or s3://bucket/prefix")
    if url.startswith("memory://"):
        raise UserError(f"storage {url} lives inside one process; workers cannot reach it. Give a shared folder "
                        "(file:///shared/dreamdpo-runs) or an object store (s3://bucket/prefix)")
    store = RunStorage(url)
    probe = f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if url.startswith("file://"):  # object stores have no folders, and a missing bucket is not created
            store.fs.makedirs(store.root, exist_ok=True)
        store.fs.pipe_file(store._path(probe), b"ok")
        store.fs.rm(store._path(probe))
    except Exception as e:  # permission, no such bucket, network, credentials: every backend its own type
        raise UserError(f"storage URL {url} is unreachable ({type(e).__name__}: {_one_line(e)}); give a URL "
                        "every worker can write, e.g. file:///shared/dreamdpo-runs") from None
