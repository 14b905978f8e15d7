"""Annotator accounts: a token is shown once; only its sha256 is stored.

Names are unique without regard to case (`alice` and `ALICE` are one person) and looked up the same
way. Reads never take the write lock (plain BEGIN on SQLite), so `annotators list` works while a
long write holds the log.
"""
from __future__ import annotations

import hashlib
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.errors import AccountInactive, LogError
from db.models import Annotator

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,200}$")
_PUBLIC = (Annotator.id, Annotator.name, Annotator.role, Annotator.active, Annotator.created_at)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _public(a) -> dict:
    return dict(id=a.id, name=a.name, role=a.role, admin=a.role == "admin", active=a.active, created_at=a.created_at)


def _read(engine):
    return engine.connect().execution_options(readonly=True)


def _same_name(name: str):
    return sa.func.lower(Annotator.name) == name.lower()


def _by_name(s: Session, name: str, lock: bool = False) -> Annotator:
    """The account called `name`, any case (an exact match wins over a case-folded one)."""
    stmt = sa.select(Annotator).where(_same_name(name)).order_by((Annotator.name != name), Annotator.id)
    a = s.scalars(stmt.with_for_update() if lock else stmt).first()
    if a is None:
        raise LogError(f"no annotator named {name!r}; see `dreamdpo annotators list`")
    return a


def active_annotator(s: Session, annotator_id: int) -> Annotator:
    """The account, inside a write: raises LogError when it does not exist, AccountInactive when it
    was deactivated (a deactivated account changes nothing in the log)."""
    who = s.get(Annotator, annotator_id)
    if who is None:
        raise LogError(f"annotator {annotator_id} does not exist; an admin adds people with `dreamdpo annotators add`")
    if not who.active:
        raise AccountInactive(f"annotator {who.name} is deactivated; ask an admin")
    return who


_ACCOUNT = sa.select(Annotator.name, Annotator.active).where(Annotator.id == sa.bindparam("me", type_=sa.Integer()))


def check_active(conn: sa.Connection, annotator_id: int) -> None:
    """active_annotator for Core statements (the claim and vote hot path): LogError when the account does
    not exist, AccountInactive when it was deactivated."""
    who = conn.execute(_ACCOUNT, {"me": annotator_id}).first()
    if who is None:
        raise LogError(f"annotator {annotator_id} does not exist; an admin adds people with `dreamdpo annotators add`")
    if not who.active:
        raise AccountInactive(f"annotator {who.name} is deactivated; ask an admin")


def add_annotator(engine, name: str, admin: bool = False) -> str:
    """Create an account; returns its token (shown once, never stored)."""
    if not isinstance(name, str) or not NAME.match(name):
        shown = name if not isinstance(name, str) or len(name) <= 40 else name[:40] + "…"
        raise LogError(f"annotator name {shown!r} must be 1-200 letters, digits or _ . @ -")
    token = secrets.token_urlsafe(32)
    with Session(engine) as s, s.begin():
        if s.get_bind().dialect.name == "postgresql":  # two adds of alice/ALICE at once: one waits for the other
            s.execute(sa.text("LOCK TABLE annotators IN SHARE ROW EXCLUSIVE MODE"))
        taken = s.scalar(sa.select(Annotator.name).where(_same_name(name)))
        if taken is not None:
            raise LogError(f"annotator {taken} already exists (names ignore case); pick another name, "
                           f"or `dreamdpo annotators activate {taken}`")
        s.add(Annotator(name=name, role="admin" if admin else "annotator", token_hash=token_hash(token), active=True))
    return token


def reissue_token(engine, name: str) -> str:
    """A new token for an existing account (shown once); the old one stops working."""
    token = secrets.token_urlsafe(32)
    with Session(engine) as s, s.begin():
        _by_name(s, name, lock=True).token_hash = token_hash(token)
    return token


def authenticate(engine, token: str) -> dict | None:
    """The active account with this token, or None."""
    if not token or not isinstance(token, str):
        return None
    with _read(engine) as conn:
        a = conn.execute(sa.select(*_PUBLIC).where(Annotator.token_hash == token_hash(token.strip()),
                                                   Annotator.active.is_(True))).first()
    return None if a is None else _public(a)


def token_hash_of(engine, annotator_id: int) -> str:
    """The stored hash of the account's token (a session cookie is signed with it, so reissuing the
    token ends every session)."""
    with _read(engine) as conn:
        return conn.execute(sa.select(Annotator.token_hash).where(Annotator.id == annotator_id)).scalar_one()


def session_account(engine, annotator_id: int) -> dict | None:
    """The active account with this id (public fields and `token_hash`), or None: what a session
    cookie is checked against at each page load."""
    with _read(engine) as conn:
        row = conn.execute(sa.select(*_PUBLIC, Annotator.token_hash).where(
            Annotator.id == annotator_id, Annotator.active.is_(True))).first()
    return None if row is None else {**_public(row), "token_hash": row.token_hash}


def list_annotators(engine) -> list[dict]:
    with _read(engine) as conn:
        return [_public(a) for a in conn.execute(sa.select(*_PUBLIC).order_by(Annotator.id))]


def get_annotator(engine, name: str) -> dict:
    with _read(engine) as conn:
        a = conn.execute(sa.select(*_PUBLIC).where(_same_name(name))
                         .order_by((Annotator.name != name), Annotator.id)).first()
    if a is None:
        raise LogError(f"no annotator named {name!r}; see `dreamdpo annotators list`")
    return _public(a)


def set_active(engine, name: str, active: bool) -> str:
    """Deactivate (no sign-in, claim, vote, undo or skip; the votes stay) or reactivate an account.
    Returns the account's stored name."""
    with Session(engine) as s, s.begin():
        a = _by_name(s, name, lock=True)
        a.active = bool(active)
        return a.name


def deactivate(engine, name: str) -> None:
    set_active(engine, name, False)


def activate(engine, name: str) -> None:
    set_active(engine, name, True)
