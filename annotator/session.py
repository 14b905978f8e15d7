"""Sessions that survive a reload without the token in the URL: a signed session cookie.

After sign-in the page stores `id.expires.nonce.signature` in the cookie COOKIE (path /, SameSite
Strict, Max-Age = the expiry). The signature is an HMAC keyed by $DREAMDPO_SESSION_SECRET (when
set) and the account's token hash, which never leaves the log: so a cookie cannot be forged
without the log, works on every app replica on the same log, and dies when the account's token is
reissued or the account is deactivated. A new tab or a reload reads it from the request
(st.context.cookies). Sign-out deletes the cookie and remembers its nonce as ended until it
expires (per app process; the deleted cookie covers other replicas).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

import streamlit as st

from db.accounts import session_account, token_hash_of

COOKIE = "dreamdpo_session"
HOURS = float(os.environ.get("DREAMDPO_SESSION_HOURS", "12"))

_JS = """
export default function (component) {
  const { data } = component;
  if (!data || data.done === window.__dreamdpoCookieDone) return;
  window.__dreamdpoCookieDone = data.done;
  const secure = location.protocol === 'https:' ? '; Secure' : '';
  document.cookie = data.cookie + '; Path=/; SameSite=Strict' + secure;
}
"""
_component = st.components.v2.component("dreamdpo_session", js=_JS)


def _signature(annotator_id: int, expires: int, nonce: str, token_hash: str) -> str:
    key = (os.environ.get("DREAMDPO_SESSION_SECRET", "") + token_hash).encode()
    return hmac.new(key, f"{annotator_id}.{expires}.{nonce}".encode(), hashlib.sha256).hexdigest()


def make(annotator_id: int, token_hash: str, now: float | None = None, hours: float = HOURS) -> str:
    expires = int((now or time.time()) + hours * 3600)
    nonce = secrets.token_urlsafe(12)
    return f"{annotator_id}.{expires}.{nonce}.{_signature(annotator_id, expires, nonce, token_hash)}"


def parse(value: str | None) -> tuple[int, int, str, str] | None:
    parts = (value or "").split(".")
    if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2], parts[3]


@st.cache_resource(show_spinner=False)
def _ended() -> dict[str, int]:
    """Nonces of signed-out sessions → their expiry (this app process)."""
    return {}


def user_for(engine, value: str | None, now: float | None = None) -> dict | None:
    """The active account a cookie value signs in, or None (bad, expired, ended, reissued, deactivated)."""
    got = parse(value)
    now = now or time.time()
    if got is None or got[1] <= now or got[2] in _ended():
        return None
    annotator_id, expires, nonce, sig = got
    account = session_account(engine, annotator_id)
    if account is None:
        return None
    hashed = account.pop("token_hash")
    if not hmac.compare_digest(sig, _signature(annotator_id, expires, nonce, hashed)):
        return None
    return account


def start(engine, user: dict) -> None:
    """Issue the cookie for this signed-in person (written by the page at its next draw)."""
    value = make(user["id"], token_hash_of(engine, user["id"]))
    st.session_state["session_cookie"] = value
    st.session_state["cookie_write"] = f"{COOKIE}={value}; Max-Age={int(HOURS * 3600)}"


def end() -> None:
    """Sign-out: this cookie no longer signs anyone in, and the page deletes it."""
    for value in (st.session_state.get("session_cookie"), cookie()):
        got = parse(value)
        if got is not None:
            _ended()[got[2]] = got[1]
    now = time.time()
    for nonce, expires in list(_ended().items()):
        if expires <= now:
            _ended().pop(nonce, None)
    st.session_state.clear()
    st.session_state["cookie_write"] = f"{COOKIE}=; Max-Age=0"


def cookie() -> str | None:
    try:
        return st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 (no browser request behind this run, as in AppTest: no cookie)
        return None


def write_pending() -> None:
    """Draw the cookie write the last sign-in or sign-out asked for (a zero-height script in the page)."""
    pending = st.session_state.get("cookie_write")
    if pending:
        _component(key="dreamdpo-session", data={"cookie": pending, "done": pending}, height=0)
