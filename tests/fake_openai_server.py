"""A local OpenAI-compatible chat server for tests: deterministic replies, injected faults.

* Binds to 127.0.0.1 only, on a free port, in a daemon thread; ``with FakeOpenAIServer() as s``.
* ``POST /v1/chat/completions`` answers ``reply_fn(body)`` (default: a reply computed from the
  messages and temperature, ending with the answer marker), with ``usage`` token counts.
* Faults are drawn per (request body, attempt number) from ``random.Random(f"{seed}|...")``, so
  which attempts fail does not depend on thread timing. Kinds: ``429``, ``500``, ``timeout``
  (sleep past the client timeout, then close), ``truncated`` (body cut short of its
  Content-Length: a broken connection), ``malformed`` (invalid JSON with a correct length),
  ``empty`` (``choices: []``), ``empty_content`` (a choice with empty text). After
  ``max_faults`` faults for one body the next attempt succeeds, so every request loop ends.
* ``paid`` counts, per request body, the requests that completed successfully: the calls a
  real provider would bill. ``attempts`` counts every request, ``faults`` the injected ones.
* ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get 401, whose
  message echoes the key that was sent (as some servers do), to test that clients scrub it.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "timeout", "truncated", "malformed", "empty", "empty_content")


def body_key(body: dict) -> str:
    """Identity of a request for fault drawing and paid counting (messages + sampling)."""
    keep = {k: body.get(k) for k in ("model", "messages", "temperature", "top_p", "max_tokens")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def default_reply(body: dict) -> str:
    """A deterministic reply that depends on the whole prompt and the temperature."""
    h = body_key(body)
    return f"Step 1: look at request {h[:12]}.\nStep 2: conclude. Therefore, the answer is {h[:4]}."


class FakeOpenAIServer:
    def __init__(self, fault_rate: float = 0.0, seed: int = 0, faults=FAULTS, timeout_sleep: float = 1.0,
                 max_faults: int = 3, api_key: str | None = None, reply_fn=default_reply, delay: float = 0.0):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")
        self.fault_rate, self.seed, self.faults = fault_rate, seed, tuple(faults)
        self.timeout_sleep, self.max_faults, self.api_key = timeout_sleep, max_faults, api_key
        self.reply_fn, self.delay = reply_fn, delay
        self.lock = threading.Lock()
        self.paid: Counter = Counter()
        self.attempts: Counter = Counter()
        self.faults_seen: Counter = Counter()
        self.bodies: dict[str, dict] = {}      # key -> the first request body seen with it
        self._faulted: Counter = Counter()
        self._httpd: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                server._handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients that gave up (timeouts, kill -9)
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="fake-openai").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def total_paid(self) -> int:
        return sum(self.paid.values())

    # ------------------------------------------------------------------------------ serving
    def _draw_fault(self, key: str) -> str | None:
        with self.lock:
            self.attempts[key] += 1
            n = self.attempts[key]
            if self._faulted[key] >= self.max_faults:
                return None
            rng = random.Random(f"{self.seed}|{key}|{n}")
            if rng.random() >= self.fault_rate:
                return None
            fault = rng.choice(self.faults)
            self._faulted[key] += 1
            self.faults_seen[fault] += 1
            return fault

    def _send(self, h, status: int, payload: bytes, headers: dict | None = None, length: int | None = None):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload) if length is None else length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.path.rstrip("/") != "/v1/chat/completions":
            return self._send(h, 404, json.dumps({"error": {"message": f"no route {h.path}"}}).encode())
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", 0))) or b"{}")
        if self.api_key is not None:
            sent = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
            if sent != self.api_key:
                msg = {"error": {"message": f"Incorrect API key provided: {sent}", "type": "invalid_request_error"}}
                return self._send(h, 401, json.dumps(msg).encode())
        if self.delay:
            time.sleep(self.delay)
        key = body_key(body)
        with self.lock:
            self.bodies.setdefault(key, body)
        fault = self._draw_fault(key)
        fast_retry = {"retry-after-ms": "5"}  # keep the client's backoff short in tests
        if fault == "429":
            return self._send(h, 429, b'{"error": {"message": "rate limited"}}', fast_retry)
        if fault == "500":
            return self._send(h, 500, b'{"error": {"message": "internal error"}}', fast_retry)
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
            h.close_connection = True
            return
        text = self.reply_fn(body)
        msg = {"role": "assistant", "content": "" if fault == "empty_content" else text}
        resp = {"id": f"chatcmpl-{key[:10]}", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [] if fault == "empty" else [{"index": 0, "message": msg, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in body.get("messages", [])),
                          "completion_tokens": len(text.split()),
                          "total_tokens": 0}}
        payload = json.dumps(resp).encode()
        if fault == "truncated":
            self._send(h, 200, payload[: len(payload) // 2], length=len(payload))
            h.close_connection = True
            return
        if fault == "malformed":
            return self._send(h, 200, payload[: len(payload) // 2] + b"}}")
        if fault is None:
            with self.lock:  # billed when computed, before the client can see the reply
                self.paid[key] += 1
        self._send(h, 200, payload)
