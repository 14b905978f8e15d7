"""A fake OpenAI-compatible chat endpoint on 127.0.0.1 for the LMM judge's tests.

It "looks" at the images: the redder image (mean R − mean B) is the better one, with
P = sigmoid(10 · difference), so verdicts are checkable. Behaviours the tests switch on:
mode 'logprobs' (top_logprobs of the one-token answer), 'text' (no logprobs, just the token),
'no-logprobs-param' (HTTP 400 when logprobs are asked for), 'always-A' (position-biased: always the
first image), 'refuse-images' (HTTP 400 as text-only models answer); fail_next (HTTP 500 for the next
n requests); delay_s (each answer waits); hang_next (the next n requests wait hang_s first);
on_request (called with each request's body before it is answered, e.g. to act as an admin mid-run).
"""
from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def redness(data_url: str) -> float:
    png = base64.b64decode(data_url.split(",", 1)[1])
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0
    return float(arr[..., 0].mean() - arr[..., 2].mean())


class FakeOpenAI:
    def __init__(self):
        self.mode = "logprobs"
        self.fail_next = 0
        self.delay_s = 0.0
        self.hang_next, self.hang_s = 0, 3.0
        self.requests: list[dict] = []  # {"auth", "body"}
        self.on_request = None
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.RLock()  # _send (which stops counting a request) runs inside it on the 500 path
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append({"auth": self.headers.get("Authorization"), "body": body,
                                          "path": self.path})
                    hang = fake.hang_next > 0
                    fake.hang_next -= hang
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    self.counted = True
                try:
                    if fake.on_request is not None:
                        fake.on_request(body)
                    fake._answer(self, body, hang)
                finally:
                    fake._finished(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, a test's teardown each time
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _finished(self, handler):
        """A request stops being in flight once its answer is about to go out (not when the handler thread
        next runs: on a loaded machine the client may already have sent its next request by then)."""
        with self._lock:
            if getattr(handler, "counted", False):
                self.in_flight -= 1
                handler.counted = False

    def _send(self, handler, code: int, payload: dict):
        data = json.dumps(payload).encode()
        self._finished(handler)
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _answer(self, handler, body: dict, hang: bool):
        if handler.path != "/v1/chat/completions":
            return self._send(handler, 404, {"error": {"message": "Not Found"}})
        if hang:
            time.sleep(self.hang_s)
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self._send(handler, 500, {"error": {"message": "internal error"}})
        if self.mode == "refuse-images":
            return self._send(handler, 400, {"error": {"message": "This model does not support image input."}})
        if self.mode == "no-logprobs-param" and body.get("logprobs"):
            return self._send(handler, 400, {"error": {"message": "logprobs is not supported by this model"}})
        content = body["messages"][0]["content"]
        images = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
        text = " ".join(p["text"] for p in content if p["type"] == "text")
        if re.search(r"\bA or B\b", text):
            diff = redness(images[0]) - redness(images[1])
            p_first = 1.0 if self.mode == "always-A" else 1 / (1 + math.exp(-10 * diff))
            options = {"A": p_first, "B": 1 - p_first}
        else:
            p_yes = 1 / (1 + math.exp(-10 * redness(images[0])))
            options = {"Yes": p_yes, "No": 1 - p_yes}
        answer = max(options, key=options.get)
        choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}
        if self.mode in ("logprobs", "always-A") and body.get("logprobs"):
            tops = [{"token": o, "logprob": math.log(max(p, 1e-9))} for o, p in options.items()]
            tops.append({"token": "The", "logprob": math.log(1e-6)})
            choice["logprobs"] = {"content": [{"token": answer, "logprob": math.log(max(options[answer], 1e-9)),
                                               "top_logprobs": sorted(tops, key=lambda t: -t["logprob"])}]}
        else:
            choice["logprobs"] = None
        self._send(handler, 200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                                  "choices": [choice]})


def serve_as_endpoint(monkeypatch, key: str, model: str = "fake-vl"):
    """A FakeOpenAI as the LMM judge's endpoint (its URL, model and key in the environment), for a fixture
    to `yield from`; closed afterwards."""
    from dreamdpo.judges.lmm import ENV_BASE_URL, ENV_KEY, ENV_MODEL

    server = FakeOpenAI()
    monkeypatch.setenv(ENV_BASE_URL, server.url)
    monkeypatch.setenv(ENV_MODEL, model)
    monkeypatch.setenv(ENV_KEY, key)
    try:
        yield server
    finally:
        server.close()
