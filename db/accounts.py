"""Annotator accounts: a token is shown once; only its sha256 is stored."""
from __future__ import annotations

import hashlib
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.errors import LogError
from db.models import Annotator

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,200}$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _public(a: Annotator) -> dict:
    return dict(id=a.id, name=a.name, role=a.role, admin=a.role == "admin", active=a.active, created_at=a.created_at)


def add_annotator(engine, name: str, admin: bool = False) -> str:
    """Create an account; returns its token (shown once, never stored)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise LogError(f"annotator name {name!r} must be 1-200 letters, digits or _ . @ -")
    token = secrets.token_urlsafe(32)
    with Session(engine) as s, s.begin():
        if s.scalar(sa.select(Annotator.id).where(Annotator.name == name)) is not None:
            raise LogError(f"annotator {name} already exists; pick another name or deactivate the old one")
        s.add(Annotator(name=name, role="admin" if admin else "annotator", token_hash=token_hash(token), active=True))
    return token


def reissue_token(engine, name: str) -> str:
    """A new token for an existing account (shown once); the old one stops working."""
    token = secrets.token_urlsafe(32)
    with Session(engine) as s, s.begin():
        a = s.scalars(sa.select(Annotator).where(Annotator.name == name)).first()
        if a is None:
            raise LogError(f"no annotator named {name!r}; see `dreamdpo annotators list`")
        a.token_hash = token_hash(token)
    return token


def authenticate(engine, token: str) -> dict | None:
    """The active account with this token, or None."""
    if not token or not isinstance(token, str):
        return None
    with Session(engine) as s, s.begin():
        a = s.scalars(sa.select(Annotator).where(Annotator.token_hash == token_hash(token.strip()),
                                                 Annotator.active.is_(True))).first()
        return None if a is None else _public(a)


def list_annotators(engine) -> list[dict]:
    with Session(engine) as s, s.begin():
        return [_public(a) for a in s.scalars(sa.select(Annotator).order_by(Annotator.id))]


def get_annotator(engine, name: str) -> dict:
    with Session(engine) as s, s.begin():
        a = s.scalars(sa.select(Annotator).where(Annotator.name == name)).first()
        if a is None:
            raise LogError(f"no annotator named {name!r}; see `dreamdpo annotators list`")
        return _public(a)


def deactivate(engine, name: str) -> None:
    """The account can no longer sign in, claim or vote; its votes stay in the log."""
    with Session(engine) as s, s.begin():
        a = s.scalars(sa.select(Annotator).where(Annotator.name == name).with_for_update()).first()
        if a is None:
            raise LogError(f"no annotator named {name!r}; see `dreamdpo annotators list`")
        a.active = False
