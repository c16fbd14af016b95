"""An OpenAI-compatible completions client, for evaluating hosted models (evaluation only).

What it sends: with ``endpoint = "chat"`` (the default) chat ``messages`` only (role/content
pairs) to ``/chat/completions``, never model-specific special tokens or a rendered chat
template, so any vendor's own template applies; with ``endpoint = "completions"`` a rendered
prompt string to ``/completions``, for servers hosting base models without a chat template
(vLLM's own server with the tiny coder). One HTTP request per sample (``n = 1``), which every
compatible server supports and makes each sample resumable on its own.

What it guarantees:
- at most ``rpm`` requests per minute, retries included (request starts are spaced by at least
  ``60 / rpm`` seconds, so any 60-second window holds at most ``rpm + 1`` starts);
- at most ``max_concurrency`` requests in flight;
- retries on HTTP 429, 5xx, 408, timeouts, connection errors and malformed replies, with
  exponential backoff and full jitter: before retry ``a`` (1-based) it waits
  ``uniform(0, min(backoff_max_s, backoff_base_s * 2**(a-1)))`` seconds, or the server's
  ``Retry-After`` when that is longer (capped at ``backoff_max_s``); a request is abandoned with
  :class:`ApiRetriesExhausted` after ``max_retries`` retries;
- a clear one-line :class:`ApiFatalError` (not retried) on 400/401/403/404/422;
- the API key (from config, or the environment variable ``key_env``) is sent only in the
  ``Authorization`` header: it is never part of a repr, a log line, an error or a record.

Stdlib HTTP only (urllib), threads for concurrency; no torch, no jax.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "ApiConfig",
    "ApiEngine",
    "ApiError",
    "ApiFatalError",
    "ApiRetriesExhausted",
    "ChatRequest",
    "Completion",
    "RateLimiter",
    "backoff_delay",
]

log = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, str]]
ENDPOINTS = ("chat", "completions")
_FATAL_STATUS = {
    400: "bad request (a sampling field or the message format is not accepted by this server)",
    401: "unauthorized: check api.key or the environment variable named by api.key_env",
    403: "forbidden: the API key has no access to this model or endpoint",
    404: "not found: check api.base_url and api.model",
    422: "unprocessable request (a sampling field is not accepted by this server)",
}


class ApiError(RuntimeError):
    """Any failure of the API client; ``str(err)`` is one line and never holds the key."""


class ApiFatalError(ApiError):
    """A reply that retrying cannot fix (bad key, unknown model, malformed request)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiRetriesExhausted(ApiError):
    """A request that still failed after ``max_retries`` retries."""


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    """Where and how to call an OpenAI-compatible ``/chat/completions`` (``endpoint = "chat"``)
    or ``/completions`` (``endpoint = "completions"``: prompt strings, for base models).

    ``rpm <= 0`` means no rate limit. ``send_top_k`` adds vLLM's non-standard ``top_k`` field
    (OpenAI itself rejects unknown fields). ``extra_body`` is merged into every request body.
    """

    base_url: str
    model: str
    key: str | None = dataclasses.field(default=None, repr=False)
    key_env: str = "OPENAI_API_KEY"
    rpm: float = 0.0
    max_concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 120.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    send_top_k: bool = False
    endpoint: str = "chat"
    extra_body: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"api.{field}: {why}")

        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise bad("base_url", f"must start with http:// or https://, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "must be a non-empty model name")
        if self.max_concurrency < 1:
            raise bad("max_concurrency", f"must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise bad("max_retries", f"must be >= 0, got {self.max_retries}")
        if not self.timeout_s > 0:
            raise bad("timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise bad("backoff_base_s", "backoff times must be >= 0")
        if self.endpoint not in ENDPOINTS:
            raise bad("endpoint", f"must be one of {ENDPOINTS}, got {self.endpoint!r}")
        if {"messages", "model", "prompt"} & set(self.extra_body):
            raise bad("extra_body", "may not override 'model', 'messages' or 'prompt'")

    @property
    def url(self) -> str:
        """The endpoint's URL (``base_url`` may already end with its path)."""
        base = self.base_url.rstrip("/")
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        return base if base.endswith(path) else base + path

    def resolve_key(self) -> str | None:
        """The key from config, else from ``$key_env``; None when neither is set (local servers)."""
        if self.key:
            return self.key
        return os.environ.get(self.key_env) or None if self.key_env else None

    def public_dict(self) -> dict[str, Any]:
        """The config without the key (safe to write to records and logs)."""
        d = dataclasses.asdict(self)
        d.pop("key")
        d["extra_body"] = dict(self.extra_body)
        return d


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """One sample to draw: chat messages (or, for the completions endpoint, a prompt string)
    and the sampling fields to send with them."""

    messages: tuple[Mapping[str, str], ...]
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = -1
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    seed: int | None = None
    prompt: str = ""


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled reply: its text, why it stopped, token usage and the attempts it took."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random,
                  retry_after_s: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): full jitter over an exponential cap.

    ``delay = U(0, min(max_s, base_s * 2**(attempt-1)))``, raised to ``retry_after_s`` (capped at
    ``max_s``) when the server asked for a wait.
    """
    cap = min(max_s, base_s * (2.0 ** (attempt - 1)))
    delay = rng.uniform(0.0, cap)
    if retry_after_s is not None:
        delay = max(delay, min(max_s, retry_after_s))
    return delay


class RateLimiter:
    """Spaces events by at least ``60 / rpm`` seconds (thread-safe); ``rpm <= 0`` is no limit."""

    def __init__(self, rpm: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 60.0 / rpm if rpm > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = -float("inf")
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Blocks until this caller may start its request."""
        if self.interval <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class _Cancelled(Exception):
    """A request not attempted because another request of the same stream failed for good."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class ApiEngine:
    """Draws chat completions from an OpenAI-compatible endpoint under rate and retry limits.

    ``stream(requests)`` yields ``(index, Completion)`` as requests finish (any order), so a
    caller can persist each sample the moment it exists; ``generate(prompts, n, sampling)`` is
    the engines-interface call (one list of ``n`` samples per prompt, in order).
    """

    name = "api"
    weights_version = 0  # a hosted model's own weights, never replaced

    def __init__(self, config: ApiConfig, *, seed: int = 0,
                 urlopen: Callable[..., Any] = urllib.request.urlopen) -> None:
        self.config = config
        self._key = config.resolve_key()
        self._limiter = RateLimiter(config.rpm)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._urlopen = urlopen
        self.requests_sent = 0  # every HTTP attempt, retries included
        self.retries = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"ApiEngine(url={self.config.url!r}, model={self.config.model!r})"

    # -- one request --------------------------------------------------------------------

    def _body(self, req: ChatRequest) -> bytes:
        body: dict[str, Any] = {"model": self.config.model}
        if self.config.endpoint == "completions":
            if req.messages or not req.prompt:
                raise ValueError("api.endpoint 'completions' sends prompt strings, not chat messages")
            body["prompt"] = req.prompt
        else:
            if req.prompt:
                raise ValueError("api.endpoint 'chat' sends chat messages, not prompt strings")
            body["messages"] = [{"role": m["role"], "content": m["content"]} for m in req.messages]
        body.update({
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
            "n": 1,
        })
        if req.stop:
            body["stop"] = list(req.stop)[:4]  # OpenAI accepts at most 4 stop sequences
        if req.seed is not None:
            body["seed"] = req.seed
        if self.config.send_top_k and req.top_k > 0:
            body["top_k"] = req.top_k
        body.update(self.config.extra_body)
        return json.dumps(body).encode()

    def _attempt(self, data: bytes) -> Completion:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.config.url, data=data, headers=headers, method="POST")
        self._limiter.acquire()
        with self._count_lock:
            self.requests_sent += 1
        where = f"{self.config.url} (model {self.config.model!r})"
        try:
            with self._urlopen(request, timeout=self.config.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            status = e.code
            detail = _error_detail(e)
            if self._key and self._key in detail:  # some vendors echo the key back
                detail = detail.replace(self._key, "<redacted>")
            if status in _FATAL_STATUS:
                hint = ""
                if self.config.endpoint == "chat" and "template" in detail.lower():
                    hint = "; a model without a chat template takes api.endpoint=completions"
                raise ApiFatalError(f"API request to {where} failed with HTTP {status}: "
                                    f"{_FATAL_STATUS[status]}{detail}{hint}", status) from None
            if status == 429 or status == 408 or status >= 500:
                raise _Retryable(f"HTTP {status}{detail}", _retry_after(e.headers)) from None
            raise ApiFatalError(f"API request to {where} failed with HTTP {status}{detail}",
                                status) from None
        except TimeoutError as e:
            raise _Retryable(f"timed out after {self.config.timeout_s:g} s ({e})") from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.config.timeout_s:g} s") from None
            raise _Retryable(f"connection error: {reason}") from None
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = (choice["text"] if self.config.endpoint == "completions"
                    else choice["message"].get("content")) or ""
            usage = payload.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable(f"malformed reply: {raw[:120]!r}") from None
        return Completion(text=text, finish_reason=choice.get("finish_reason"),
                          prompt_tokens=usage.get("prompt_tokens"),
                          completion_tokens=usage.get("completion_tokens"))

    def complete(self, req: ChatRequest, stop: threading.Event | None = None) -> Completion:
        """One sample, retried per the policy above (no further attempt once ``stop`` is set)."""
        data = self._body(req)
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            if stop is not None and stop.is_set():
                raise _Cancelled()
            try:
                done = self._attempt(data)
                return dataclasses.replace(done, attempts=attempt + 1)
            except _Retryable as e:
                if attempt == cfg.max_retries:
                    raise ApiRetriesExhausted(
                        f"API request to {cfg.url} (model {cfg.model!r}) still failing after "
                        f"{cfg.max_retries} retries; last error: {e}") from None
                with self._rng_lock:
                    delay = backoff_delay(attempt + 1, cfg.backoff_base_s, cfg.backoff_max_s,
                                          self._rng, e.retry_after_s)
                with self._count_lock:
                    self.retries += 1
                log.info("API retry %d/%d in %.2fs: %s", attempt + 1, cfg.max_retries, delay, e)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- many requests ------------------------------------------------------------------

    def stream(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        """Yields ``(index into requests, Completion)`` as each finishes.

        The first request that fails for good stops the stream: requests not yet started are
        cancelled, and its error is raised after everything that already finished was yielded.
        """
        if not requests:
            return
        pool = cf.ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(requests)),
                                     thread_name_prefix="api")
        stop = threading.Event()

        def run(r: ChatRequest) -> Completion:
            try:
                return self.complete(r, stop)
            except ApiError:
                stop.set()  # no new attempts anywhere once one request failed for good
                raise

        futures = {pool.submit(run, r): i for i, r in enumerate(requests)}
        error: BaseException | None = None
        try:
            for fut in cf.as_completed(futures):
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if isinstance(exc, _Cancelled):
                    continue
                if exc is not None:
                    if error is None:
                        error = exc
                        for f in futures:
                            f.cancel()
                    continue
                yield futures[fut], fut.result()
        finally:
            stop.set()
            for f in futures:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
        if error is not None:
            raise error

    def generate(self, prompts: Sequence[Messages | str], n: int, sampling: Any) -> list[list[Any]]:
        """``n`` samples per prompt, in order: the engines-interface call
        (:class:`rollout.engines.base.Engine`), returning :class:`rollout.engines.base.Sample`
        objects with the text and finish reason (a hosted model gives no token ids or log-probs:
        ``token_ids`` is empty and ``logprobs`` None).

        A prompt is a list of chat messages, or a string sent as one user message (as the
        prompt itself with ``endpoint = "completions"``, which takes strings only). ``sampling``
        is a :class:`rollout.engines.base.SamplingConfig` or any object or mapping with
        ``temperature``, ``top_p``, ``top_k``, ``max_tokens`` and optionally ``stop`` and
        ``seed``; with a seed, sample ``k`` of the call (prompt-major order) is sent with
        ``seed + k``, so no two samples share one.
        """
        from rollout.engines.base import Sample

        if isinstance(prompts, (str, bytes)) or n < 1:
            raise ValueError("generate: pass a list of prompts and n >= 1")
        base = _get(sampling, "seed", None)
        if self.config.endpoint == "completions":
            if not all(isinstance(p, str) for p in prompts):
                raise ValueError("generate: api.endpoint 'completions' takes prompt strings")
            reqs = [dataclasses.replace(chat_request((), sampling, seed=None if base is None
                                                     else base + j * n + s), prompt=p)
                    for j, p in enumerate(prompts) for s in range(n)]
        else:
            chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
            reqs = [chat_request(c, sampling, seed=None if base is None else base + j * n + s)
                    for j, c in enumerate(chats) for s in range(n)]
        out: list[Any] = [None] * len(reqs)
        for i, c in self.stream(reqs):
            out[i] = Sample(token_ids=[], text=c.text, logprobs=None,
                            finish_reason=c.finish_reason or "stop")
        return [out[j * n:(j + 1) * n] for j in range(len(prompts))]

    def load_weights(self, named_tensors: Any) -> None:
        """A hosted model's weights cannot be replaced (evaluation only)."""
        raise NotImplementedError("the api engine serves a hosted model: weights cannot be pushed")

    def close(self) -> None:
        """Nothing to release (connections are per request); present for the engine interface."""


def _get(sampling: Any, name: str, default: Any) -> Any:
    if isinstance(sampling, Mapping):
        return sampling.get(name, default)
    return getattr(sampling, name, default)


def chat_request(messages: Messages, sampling: Any, *, seed: int | None) -> ChatRequest:
    """A :class:`ChatRequest` from messages and any sampling object or mapping."""
    for m in messages:
        if set(m) - {"role", "content"} or not isinstance(m.get("content"), str):
            raise ValueError(f"chat message must have only 'role' and str 'content', got {dict(m)!r:.80}")
    base_seed = _get(sampling, "seed", None)
    return ChatRequest(
        messages=tuple(dict(m) for m in messages),
        temperature=float(_get(sampling, "temperature", 0.8)),
        top_p=float(_get(sampling, "top_p", 0.95)),
        top_k=int(_get(sampling, "top_k", -1) or -1),
        max_tokens=int(_get(sampling, "max_tokens", 1024)),
        stop=tuple(_get(sampling, "stop", ()) or ()),
        seed=seed if seed is not None else base_seed,
    )


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The server's short error message, if its body carries one (OpenAI's {"error": {...}})."""
    try:
        body = e.read()[:2000]
        msg = json.loads(body).get("error", {})
        msg = msg.get("message") if isinstance(msg, dict) else msg
    except (OSError, ValueError, AttributeError):  # no body, not JSON, not an object
        return ""
    if not msg:
        return ""
    return " (server says: " + " ".join(str(msg).split())[:200] + ")"
