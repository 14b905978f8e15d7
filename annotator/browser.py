"""Drive the annotator app in a real Chromium (Playwright, Debian's /usr/bin/chromium): for the browser
tests and bench/bench_browser.py, which must use the app exactly as people do (keys, polling, tabs).

Every wait here is on a condition with a generous time-out, never a fixed sleep: a busy machine only
makes them slower. A key press is repeated until the page's shortcut handler takes it (Streamlit
re-binds shortcuts when it redraws, and a key pressed in that instant is lost), which the page
reports through `defaultPrevented`: a key that reached a handler is never sent twice.
"""
from __future__ import annotations

import re
import socket
import time

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEYS = {"left": "ArrowLeft", "right": "ArrowRight", "tie": "t", "both_bad": "b", "skip": "s", "zoom": "z",
        "unzoom": "Escape"}
TIMEOUT_MS = 60_000
UNTIL_S = 300.0  # `until`: only a hang takes this long, a loaded machine does not
# runs in every page before the app: a bubbling listener on window sees a key after the app's
# shortcut handlers (bound on document), so defaultPrevented says whether one of them took it
_KEY_PROBE = "window.addEventListener('keydown', e => { window.__dreamdpoKeyTaken = e.defaultPrevented; });"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)


def until(condition, what: str, timeout: float = UNTIL_S, done=bool):
    """Poll `condition` until `done` holds for what it returns (by default: something truthy), and return
    that; an AssertionError naming `what` after a generous time-out (only a hang reaches it, a loaded
    machine does not)."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if done(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.05)


def until_set(condition, what: str = "a value", timeout: float = 600.0):
    """until(), for a condition whose answer may be falsy but set (a step 0): its first value that is not None."""
    return until(condition, what, timeout, done=lambda v: v is not None)


def sign_in(browser, base: str, token: str, timeout_ms: int = TIMEOUT_MS, viewport: dict | None = None,
            wait: bool = False):
    """A fresh context (its own cookies and session) at `base` (the app, or one of its page URLs), with
    `token` typed into the sign-in form; returns (context, page). With `wait`, returns once the app
    says who is signed in (a refused token then times out: leave it off to check a refusal)."""
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    context.set_default_timeout(timeout_ms)
    context.add_init_script(_KEY_PROBE)
    page = context.new_page()
    page.goto(base)
    page.locator("input[type=password]").fill(token)
    page.get_by_role("button", name="Sign in").click()
    if wait:
        page.get_by_text(re.compile(r"^Signed in as")).wait_for()
    return context, page


def wait_pair(page, pair_id: int, timeout_ms: int = TIMEOUT_MS) -> None:
    """Until the page shows pair `pair_id` with its vote buttons."""
    page.get_by_text(re.compile(rf"pair {pair_id}$")).wait_for(timeout=timeout_ms)
    page.get_by_role("button", name=re.compile(r"^Skip")).wait_for(timeout=timeout_ms)


def wait_empty(page, timeout_ms: int = TIMEOUT_MS) -> None:
    page.get_by_text("No pairs are waiting for you").wait_for(timeout=timeout_ms)


def press(page, key: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Press a key ('left', 'right', 'tie', 'both_bad', 'skip'; 'zoom', 'unzoom') until a shortcut handler takes it."""
    end = time.monotonic() + timeout_s
    while True:
        page.evaluate("window.__dreamdpoKeyTaken = null; document.activeElement && document.activeElement.blur()")
        page.keyboard.press(KEYS[key])
        if page.evaluate("window.__dreamdpoKeyTaken"):
            return
        if time.monotonic() > end:
            raise TimeoutError(f"no shortcut handler took the key {key!r} within {timeout_s:.0f} s")
        page.wait_for_timeout(50)  # poll: the handlers are being re-bound
