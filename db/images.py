"""Images of the log: PNG bytes stored once, keyed by their sha256 (pairs, renders, previews, turntables)."""
from __future__ import annotations

import hashlib
import struct

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.engine import read_only
from db.errors import LogError
from db.models import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def put_image(session: Session, png: bytes) -> str:
    """Store PNG bytes once (insert-if-absent) inside the caller's transaction; returns the sha256 hex
    that keys them."""
    if not isinstance(png, (bytes, bytearray, memoryview)) or bytes(png[:8]) != PNG_MAGIC:
        raise LogError("an image given to the log is not PNG bytes; encode it with dreamdpo.images.png_bytes")
    png = bytes(png)
    digest = hashlib.sha256(png).hexdigest()
    width, height = struct.unpack(">II", png[16:24]) if len(png) >= 24 else (0, 0)
    insert: postgresql.Insert | sqlite.Insert = (
        postgresql.insert(Image) if session.get_bind().dialect.name == "postgresql" else sqlite.insert(Image))
    session.execute(insert.values(id=digest, png=png, width=width, height=height)
                    .on_conflict_do_nothing(index_elements=["id"]))
    return digest


def save_image(engine: sa.Engine, png: bytes) -> str:
    """Store one PNG (previews, turntables) in its own transaction; returns its id."""
    with Session(engine) as s, s.begin():
        return put_image(s, png)


def get_image(engine: sa.Engine, image_id: str) -> bytes | None:
    with read_only(engine) as conn:
        return conn.execute(sa.select(Image.png).where(Image.id == image_id)).scalar()
