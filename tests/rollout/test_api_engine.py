"""The OpenAI-compatible API engine against a real HTTP server on loopback."""
from __future__ import annotations

import random
import time

import pytest

from rollout.engines.api_engine import (
    ApiConfig,
    ApiEngine,
    ApiFatalError,
    ApiRetriesExhausted,
    ChatRequest,
    RateLimiter,
    backoff_delay,
    chat_request,
)
from tests.helpers.fake_openai import FakeOpenAI

MSG = ({"role": "user", "content": "Say hi."},)


def _engine(server: FakeOpenAI, **kw) -> ApiEngine:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("timeout_s", 5.0)
    return ApiEngine(ApiConfig(base_url=server.base_url, model="m", **kw))


def test_request_body_and_key_from_environment(monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-secret-123")
    with FakeOpenAI(lambda b: "echo:" + b["messages"][-1]["content"]) as srv:
        eng = _engine(srv, key_env="MY_TEST_KEY")
        sampling = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "max_tokens": 77, "stop": ["User:"]}
        out = eng.generate([list(MSG), "two"], 2, sampling)
    assert [[c.text for c in row] for row in out] == [["echo:Say hi."] * 2, ["echo:two"] * 2]
    assert len(srv.log) == 4
    body = srv.log[0].body
    assert body["model"] == "m" and body["n"] == 1 and body["max_tokens"] == 77
    assert body["temperature"] == 0.8 and body["top_p"] == 0.95 and body["stop"] == ["User:"]
    assert "top_k" not in body  # OpenAI rejects unknown fields; opt-in only
    assert set(body["messages"][0]) == {"role", "content"}
    assert all(r.auth == "Bearer sk-secret-123" for r in srv.log)
    assert "sk-secret" not in repr(eng) and "sk-secret" not in repr(eng.config)
    assert out[0][0].finish_reason == "stop" and out[0][0].token_ids == []
    assert "seed" not in body


def test_engine_interface_with_sampling_config_gives_each_sample_its_own_seed():
    from rollout.engines.base import Engine, Sample, SamplingConfig

    with FakeOpenAI(lambda b: f"seed={b['seed']}") as srv:
        eng = _engine(srv)
        assert isinstance(eng, Engine)
        out = eng.generate(["a", "b"], 3, SamplingConfig(temperature=1.0, seed=100, top_k=0))
    assert [[s.text for s in row] for row in out] == [
        ["seed=100", "seed=101", "seed=102"], ["seed=103", "seed=104", "seed=105"]]
    assert all(isinstance(s, Sample) and s.logprobs is None for row in out for s in row)
    with pytest.raises(NotImplementedError, match="hosted model"):
        eng.load_weights([])


def test_top_k_is_sent_when_asked_and_no_auth_without_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as srv:
        eng = _engine(srv, send_top_k=True, extra_body={"repetition_penalty": 1.1})
        eng.complete(chat_request(MSG, {"top_k": 40}, seed=7))
    body = srv.log[0].body
    assert body["top_k"] == 40 and body["seed"] == 7 and body["repetition_penalty"] == 1.1
    assert srv.log[0].auth is None


def test_retries_on_429_500_and_garbage_then_succeeds():
    with FakeOpenAI(faults=[429, 500, 503, "garbage"]) as srv:
        eng = _engine(srv, max_retries=4)
        c = eng.complete(ChatRequest(MSG))
    assert c.text == "hello" and c.attempts == 5
    assert [r.status for r in srv.log] == [429, 500, 503, 299, 200]
    assert eng.retries == 4 and eng.requests_sent == 5


def test_retries_on_a_stalled_server():
    with FakeOpenAI(faults=["stall"], stall_s=3.0) as srv:
        eng = _engine(srv, timeout_s=0.3)
        t0 = time.monotonic()
        c = eng.complete(ChatRequest(MSG))
        took = time.monotonic() - t0
    assert c.text == "hello" and c.attempts == 2
    assert 0.3 <= took < 2.5  # gave up on the stalled reply instead of waiting 3 s for it


def test_retry_budget_is_enforced():
    with FakeOpenAI(faults=[500] * 10) as srv:
        eng = _engine(srv, max_retries=2)
        with pytest.raises(ApiRetriesExhausted, match=r"after 2 retries; last error: HTTP 500"):
            eng.complete(ChatRequest(MSG))
    assert len(srv.log) == 3


def test_connection_errors_are_retried_then_reported():
    with FakeOpenAI() as srv:
        url = srv.base_url
    eng = ApiEngine(ApiConfig(base_url=url, model="m", max_retries=2, backoff_base_s=0.01))
    with pytest.raises(ApiRetriesExhausted, match="connection error"):
        eng.complete(ChatRequest(MSG))
    assert eng.requests_sent == 3


@pytest.mark.parametrize("status, words", [(401, "unauthorized"), (403, "forbidden"),
                                           (404, "not found")])
def test_auth_and_missing_model_fail_fast_with_one_line(status, words):
    with FakeOpenAI(faults=[status], echo_auth_in_errors=True) as srv:
        eng = _engine(srv, key="sk-do-not-leak", max_retries=5)
        with pytest.raises(ApiFatalError) as info:
            eng.complete(ChatRequest(MSG))
    msg = str(info.value)
    assert f"HTTP {status}" in msg and words in msg and "\n" not in msg
    assert "sk-do-not-leak" not in msg and "<redacted>" in msg
    assert len(srv.log) == 1 and info.value.status == status


def _max_in_window(times, width):
    return max(sum(1 for u in times if t <= u < t + width) for t in times)


def test_rpm_limit_spaces_request_starts():
    rpm = 600  # one request per 0.1 s
    with FakeOpenAI() as srv:
        eng = _engine(srv, rpm=rpm, max_concurrency=4)
        eng.generate([list(MSG)], 10, {})
    times = sorted(r.t for r in srv.log)
    assert len(times) == 10
    # Nominally 3 starts in any 0.25 s window (0.1 s apart); one more allowed for the arrival
    # jitter of a loaded machine. Without the limit all 4 concurrent requests arrive at once.
    assert _max_in_window(times, 0.25) <= 4, times
    assert times[-1] - times[0] >= 0.9 - 0.05


def test_rpm_limit_counts_retries():
    with FakeOpenAI(faults=[500, 500]) as srv:
        eng = _engine(srv, rpm=300)  # 0.2 s apart, retries included
        eng.complete(ChatRequest(MSG))
    times = [r.t for r in srv.log]
    assert len(times) == 3 and times[-1] - times[0] >= 0.4 - 0.05


def test_concurrency_limit_holds():
    with FakeOpenAI(delay_s=0.3) as srv:
        eng = _engine(srv, max_concurrency=3)
        eng.generate([list(MSG)], 9, {})
    # never more than 3 at once; under load the server may not see all 3 overlap
    assert 2 <= srv.max_in_flight <= 3


def test_stream_yields_finished_samples_before_a_fatal_error():
    with FakeOpenAI(fail_after=(3, 401)) as srv:
        eng = _engine(srv, max_concurrency=1)
        got = []
        with pytest.raises(ApiFatalError, match="HTTP 401"):
            for i, c in eng.stream([ChatRequest(MSG, seed=i) for i in range(6)]):
                got.append(i)
    assert sorted(got) == [0, 1, 2]
    assert len(srv.log) == 4  # the rest were cancelled, not sent


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(0)
    for attempt in range(1, 8):
        cap = min(10.0, 0.5 * 2 ** (attempt - 1))
        draws = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(300)]
        assert 0 <= min(draws) and max(draws) <= cap
        assert max(draws) > 0.8 * cap  # jitter spans the whole window
    assert backoff_delay(1, 0.5, 10.0, rng, retry_after_s=3.0) == 3.0
    assert backoff_delay(1, 0.5, 10.0, rng, retry_after_s=99.0) == 10.0


def test_rate_limiter_with_a_fake_clock():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(120, clock=lambda: now[0], sleep=sleep)  # 0.5 s apart
    for _ in range(4):
        lim.acquire()
    assert slept == [0.5, 0.5, 0.5]
    assert RateLimiter(0).interval == 0


@pytest.mark.parametrize("field, kw", [
    ("base_url", {"base_url": "localhost:8000"}),
    ("model", {"model": ""}),
    ("max_concurrency", {"max_concurrency": 0}),
    ("max_retries", {"max_retries": -1}),
    ("timeout_s", {"timeout_s": 0}),
])
def test_config_validation_names_the_field(field, kw):
    args = {"base_url": "http://127.0.0.1:1/v1", "model": "m"} | kw
    with pytest.raises(ValueError, match=rf"^api\.{field}:"):
        ApiConfig(**args)


def test_url_and_public_dict():
    cfg = ApiConfig(base_url="https://x.org/v1/", model="m", key="sk-abc")
    assert cfg.url == "https://x.org/v1/chat/completions"
    assert ApiConfig(base_url="https://x.org/v1/chat/completions", model="m").url.count("chat") == 1
    assert "key" not in cfg.public_dict() and "sk-abc" not in str(cfg.public_dict())
    assert cfg.resolve_key() == "sk-abc"


def test_chat_messages_are_checked():
    with pytest.raises(ValueError, match="chat message"):
        chat_request([{"role": "user", "content": "x", "name": "bob"}], {}, seed=None)


def test_the_key_never_reaches_logs_or_errors_on_retries(caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="rollout.engines.api_engine")
    with FakeOpenAI(faults=[500, 429, 500], echo_auth_in_errors=True) as srv:
        eng = _engine(srv, key="sk-hidden-456", max_retries=1)
        with pytest.raises(ApiRetriesExhausted) as info:
            eng.complete(ChatRequest(MSG))
    assert "retry 1/1" in caplog.text and "scripted 500" in caplog.text
    assert "sk-hidden-456" not in caplog.text + str(info.value)
    assert "<redacted>" in str(info.value)


def test_completions_endpoint_sends_the_prompt_string_and_reads_the_text():
    """A base model behind vLLM's server: prompt strings to /completions, with seeds, stop
    strings and 429 retries as for chat."""
    with FakeOpenAI(lambda b: "text:" + b["prompt"], faults=[429], chat_template=False) as srv:
        eng = _engine(srv, endpoint="completions")
        out = eng.generate(["def f():", "x ="], 2, {"temperature": 1.0, "top_p": 1.0,
                                                  "max_tokens": 9, "seed": 5, "stop": ["\n\n"]})
    assert [[s.text for s in row] for row in out] == [["text:def f():"] * 2, ["text:x ="] * 2]
    assert all(r.path == "/v1/completions" for r in srv.log) and len(srv.log) == 5
    body = srv.ok_requests[0].body
    assert "messages" not in body and body["stop"] == ["\n\n"] and body["max_tokens"] == 9
    assert sorted(r.body["seed"] for r in srv.ok_requests) == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="takes prompt strings"):
        eng.generate([list(MSG)], 1, {})


def test_chat_against_a_base_model_says_to_use_completions():
    with FakeOpenAI(chat_template=False) as srv, pytest.raises(
            ApiFatalError, match=r"HTTP 400.*chat template.*takes api\.endpoint=completions$"):
        _engine(srv).complete(chat_request(MSG, {}, seed=None))
    with pytest.raises(ValueError, match=r"^api\.endpoint: must be one of \('chat', 'completions'\)"):
        ApiConfig(base_url="http://x", model="m", endpoint="text")
    assert ApiConfig(base_url="http://h/v1/", model="m", endpoint="completions").url == \
        "http://h/v1/completions"
