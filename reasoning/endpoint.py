"""A client for OpenAI-compatible chat-completions endpoints (vLLM, Ollama, hosted providers).

Design choices:
- Standard library only (`urllib.request` + `concurrent.futures`): one POST per request, no SDK,
  so the project gains no dependency and the client works against any server that speaks
  `/v1/chat/completions`.
- The API key is read from the environment variable named in the config, never from a file or
  the params, so it stays out of DVC's params, logs and provenance records.
- Transient failures (HTTP 429 and 5xx, connection errors, timeouts) are retried with
  exponential backoff and jitter, honouring a numeric `Retry-After`; other HTTP errors (a wrong
  model name, a bad key) fail at once with the server's message, since retrying cannot fix them.
- Servers that ignore `n` (Ollama does) get further requests until n choices are collected.
- A reasoning model's thinking arrives either as a separate `reasoning_content` (vLLM, DeepSeek)
  or `reasoning` (OpenRouter) field, or inline as `<think>...</think>` in the content; the
  client returns both fields untouched and `reasoning.distill.split_trace` interprets them.
- The teachers themselves (which model, which prompt) live in `reasoning.teacher`.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class EndpointError(RuntimeError):
    """The endpoint refused a request, or kept failing after all retries."""


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str = "http://localhost:8000/v1"  # vLLM's default; Ollama: http://localhost:11434/v1
    api_key_env: str = ""  # name of the environment variable holding the key; "" sends no key
    timeout_s: float = 600.0  # per request; long reasoning traces take minutes
    max_retries: int = 5
    backoff_s: float = 2.0  # first retry waits about this long, doubling each time
    max_backoff_s: float = 60.0
    concurrency: int = 8  # requests in flight at once
    extra_body: dict[str, Any] = field(default_factory=dict)  # e.g. {"chat_template_kwargs": {...}} for vLLM

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint base_url {self.base_url!r} must start with http:// or https://")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.concurrency < 1:
            raise ValueError("endpoint needs timeout_s > 0, max_retries >= 0, backoff_s >= 0 and "
                             "concurrency >= 1")


@dataclass(frozen=True)
class Choice:
    content: str
    reasoning: str | None  # the separate reasoning field, when the server sends one
    finish_reason: str  # "stop" or "length"
    model: str  # the model id the server reports having run (provenance)


class ChatClient:
    """POST chat completions with retries; `complete_many` runs requests concurrently."""

    def __init__(self, cfg: EndpointConfig, model: str, sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.model, self._sleep = cfg, model, sleep
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise EndpointError(f"environment variable {cfg.api_key_env} is empty or unset: export the API "
                                    "key there, or set api_key_env: '' for a server without authentication")
            self._headers["Authorization"] = f"Bearer {key}"

    def complete(self, messages: Sequence[dict[str, str]], n: int = 1, temperature: float = 0.7,
                 top_p: float = 1.0, max_tokens: int = 1024, seed: int | None = None,
                 stop: Sequence[str] = ()) -> list[Choice]:
        """n choices for one conversation; asks again while the server returns fewer than n."""
        choices: list[Choice] = []
        for attempt in range(n):  # a server honouring n answers in one request
            body: dict[str, Any] = {"model": self.model, "messages": list(messages), "n": n - len(choices),
                                    "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                                    **self.cfg.extra_body}
            if seed is not None:
                body["seed"] = seed + attempt  # a repeated request must not repeat the same sample
            if stop:
                body["stop"] = list(stop)
            reply = self._post(body)
            for c in reply.get("choices") or []:
                msg = c.get("message") or {}
                choices.append(Choice(
                    content=msg.get("content") or "",
                    reasoning=msg.get("reasoning_content") or msg.get("reasoning"),
                    finish_reason="length" if c.get("finish_reason") == "length" else "stop",
                    model=str(reply.get("model") or self.model),
                ))
            if len(choices) >= n:
                return choices[:n]
        raise EndpointError(f"{self.url} returned {len(choices)} of {n} choices after {n} requests")

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> Iterator[tuple[int, list[Choice], float]]:
        """Run `complete(**request)` for each request, at most `concurrency` at once.

        Yields (request index, choices, seconds) as requests finish, so callers can record each
        result at once; the first request that fails for good cancels the rest and raises.
        """
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            pending = {}
            todo = iter(enumerate(requests))

            def submit() -> None:
                for i, req in todo:
                    pending[pool.submit(self._timed, req)] = i
                    if len(pending) >= self.cfg.concurrency:
                        return

            submit()
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        choices, seconds = fut.result()
                        yield i, choices, seconds
                    submit()
            finally:
                for fut in pending:
                    fut.cancel()

    def _timed(self, request: dict[str, Any]) -> tuple[list[Choice], float]:
        t0 = time.perf_counter()
        choices = self.complete(**request)
        return choices, time.perf_counter() - t0

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in RETRY_STATUS:
                    hint = " (check the key in the variable named by api_key_env)" if e.code in (401, 403) else ""
                    raise EndpointError(f"{self.url} answered HTTP {e.code}: {detail}{hint}") from None
                error = f"HTTP {e.code}: {detail}"
                retry_after = _seconds(e.headers.get("Retry-After"))
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                error = f"{type(e).__name__}: {e}"
            except json.JSONDecodeError as e:
                error = f"reply is not JSON ({e})"
            if attempt == self.cfg.max_retries:
                raise EndpointError(f"{self.url} failed {attempt + 1} times; last error {error}")
            cap = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** attempt)
            self._sleep(min(retry_after, self.cfg.max_backoff_s) if retry_after is not None
                        else cap * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
