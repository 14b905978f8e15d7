"""Keyboard votes that are never lost while the page redraws.

Streamlit's button shortcuts are unbound for a moment at every redraw, and a key pressed then
is dropped silently. Here one listener on the document (installed once per tab, in the page
itself: a components.v2 component, not an iframe) numbers every vote key and queues it; the
queue is sent to Python one key at a time, and a key leaves the queue only when the page comes
back saying it handled that number (`acked`). A key that got no answer within RESEND_MS is sent
again; Python handles each number once. Keys wait while the pair's images are still loading, so
no vote is cast on a pair that is not drawn yet.

A click on a candidate's image goes through the same queue: on an image inside a container keyed
`grid-…` it is the action "zoom" with where it landed (`at`: fractions of the image's width and
height, from which the page finds the view clicked); on one keyed `zoom-…` it is "unzoom".
"""
from __future__ import annotations

import streamlit as st

# key as the browser names it → action
KEYMAP = {"ArrowLeft": "left", "ArrowRight": "right", "t": "tie", "b": "both_bad", "s": "skip", "u": "undo",
          "z": "zoom", "Escape": "unzoom", **{str(i): f"view{i}" for i in range(1, 10)}}
RESEND_MS = 2000

_JS = """
export default function (component) {
  const { data, setTriggerValue } = component;
  const S = window.__dreamdpoKeys || (window.__dreamdpoKeys = { queue: [], seq: 0, acked: 0, inflight: 0, sentAt: 0 });
  S.send = setTriggerValue;
  S.keymap = (data && data.keymap) || {};
  const acked = (data && data.acked) || 0;
  if (acked > S.acked) S.acked = acked;
  S.queue = S.queue.filter(k => k.seq > S.acked);
  const imagesReady = () => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
    .every(img => img.complete);
  S.flush = () => {
    if (!S.queue.length || !S.send || !imagesReady()) return;
    const head = S.queue[0];
    if (S.inflight === head.seq && Date.now() - S.sentAt < RESEND_MS) return;
    S.inflight = head.seq; S.sentAt = Date.now();
    S.send('key', { seq: head.seq, action: head.action, at: head.at || null });
  };
  if (!S.listening) {
    S.listening = true;
    document.addEventListener('keydown', (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
      const t = e.target;
      if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
      const action = S.keymap[e.key.length === 1 ? e.key.toLowerCase() : e.key];
      if (!action) return;
      e.preventDefault();
      S.queue.push({ seq: ++S.seq, action });
      S.flush();
    });
    document.addEventListener('click', (e) => {
      const img = e.target && e.target.closest ? e.target.closest('img') : null;
      const box = img && img.closest('[class*="st-key-grid-"], [class*="st-key-zoom-"]');
      if (!box) return;
      const r = img.getBoundingClientRect();
      const at = [(e.clientX - r.left) / (r.width || 1), (e.clientY - r.top) / (r.height || 1)];
      const zoomed = box.matches('[class*="st-key-zoom-"]');
      S.queue.push({ seq: ++S.seq, action: zoomed ? 'unzoom' : 'zoom', at: zoomed ? null : at });
      S.flush();
    });
    setInterval(() => S.flush(), 100);
  }
  S.flush();
}
""".replace("RESEND_MS", str(RESEND_MS))

_component = st.components.v2.component("dreamdpo_keys", js=_JS)


def pressed() -> tuple[int, str, tuple[float, float] | None] | None:
    """Mount the listener (tell it which keys were handled) and return this rerun's key or click:
    (seq, action, where a click landed or None)."""
    ss = st.session_state
    result = _component(key="dreamdpo-keys", data={"acked": ss.get("key_seq", 0), "keymap": KEYMAP},
                        on_key_change=lambda: None, height=0)
    sent = getattr(result, "key", None)
    if not sent:
        return None
    seq = int(sent["seq"])
    if seq <= ss.get("key_seq", 0):
        return None  # sent again after a slow answer: already handled
    ss["key_seq"] = seq
    at = sent.get("at")
    where = (float(at[0]), float(at[1])) if isinstance(at, (list, tuple)) and len(at) == 2 else None
    return seq, str(sent["action"]), where


def handled() -> None:
    """Redraw at once after a key, so the listener learns it was handled and sends the next one."""
    st.rerun(scope="fragment")
