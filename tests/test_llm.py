"""The LLM gateway, driven through the real openai SDK (fake server over HTTP, or respx)
and through TestModel. Every test checks something a stage or an operator would notice."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import date, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Literal

import httpx
import pytest
import respx
from pydantic import AnyUrl, BaseModel, Field
from sqlalchemy import select

import pipeline.services.llm as llm
from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from pipeline.services.llm import (
    BudgetExceeded,
    CircuitOpen,
    Gateway,
    InvalidOutput,
    ModelReply,
    ModelRequestsBlocked,
    NoModelConfigured,
    OutputTruncated,
    ProviderUnavailable,
    Refused,
    RequestRejected,
    UnsupportedSchema,
    make_client,
    parse_retry_after,
    strict_json_schema,
)
from pipeline.core.prompts import Prompt
from pipeline.core.schema import llm_cache, llm_calls
from pipeline.services.testing import NetworkBlocked, TestModel, TestModelError, sample
from tests.fakes.openai_server import FakeOpenAIServer, Fault, Garbage, Reply


class Claim(BaseModel):
    text: str = Field(min_length=3)
    confidence: float = Field(ge=0, le=1)
    source_url: str | None = None


class Verdict(BaseModel):
    label: Literal["crypto", "markets", "other"]
    summary: str
    claims: list[Claim] = []


GOOD = {"label": "crypto", "summary": "Bitcoin rose.", "claims": [{"text": "BTC up 5%", "confidence": 0.9, "source_url": None}]}
PROMPT = Prompt(
    name="classifier",
    version="abc123",
    messages=[{"role": "system", "content": "Classify news."}, {"role": "user", "content": "Bitcoin rose 5% today."}],
)

OTHER_PROMPT = PROMPT.model_copy(update={"messages": [{"role": "user", "content": "Stocks fell 2% on Friday."}]})


class Sleeps:
    """An injectable sleep that records waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)



@pytest.fixture
def server(allow_model_requests):
    with FakeOpenAIServer() as fake:
        yield fake


def make_config(tmp_path: Path, **llm_settings):
    return parse_config({"llm": llm_settings}, root=tmp_path)


def gateway_for(server: FakeOpenAIServer, tmp_path, ledger, sleeps: Sleeps | None = None, **llm_settings) -> Gateway:
    config = make_config(tmp_path, base_url=server.base_url, **llm_settings)
    return Gateway(config, ledger, run_id="run-1", sleep=sleeps or Sleeps())


def rows(ledger: Ledger) -> list[dict]:
    with ledger.engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(select(llm_calls).order_by(llm_calls.c.id))]


def run(coroutine):
    return asyncio.run(coroutine)


# --- structured output through the real SDK ---------------------------------------------------


def test_valid_structured_output_uses_a_strict_schema(server, tmp_path, ledger):
    server.add(GOOD)
    gateway = gateway_for(server, tmp_path, ledger)

    verdict = run(gateway.call("classifier", PROMPT, Verdict, stage="classify"))

    assert verdict == Verdict.model_validate(GOOD)
    sent = server.chat_requests[0]
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.messages == PROMPT.messages
    response_format = sent.response_format
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["label", "summary", "claims"]
    claim = schema["$defs"]["Claim"]
    assert claim["required"] == ["text", "confidence", "source_url"]  # Optional stays required, nullable
    assert {"type": "null"} in claim["properties"]["source_url"]["anyOf"]
    assert "\"minLength\":" not in json.dumps(schema) and "minLength 3" in claim["properties"]["text"]["description"]
    # What strict mode accepts stays a schema keyword, so a constrained decoder enforces it.
    assert claim["properties"]["confidence"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert schema["properties"]["label"]["enum"] == ["crypto", "markets", "other"]
    # a base_url without any key works: the SDK gets a placeholder key
    assert sent.headers["authorization"] == f"Bearer {llm.PLACEHOLDER_API_KEY}"


def test_respx_with_an_injected_httpx_client_and_a_key_from_config(tmp_path, ledger, monkeypatch, allow_model_requests):
    monkeypatch.setenv("NEWSDESK_LLM_KEY", "sk-live-abcdefghijklmnop")
    config = make_config(tmp_path, api_key_env="NEWSDESK_LLM_KEY", organization="org-news")
    completion = {
        "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": json.dumps(GOOD)}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }
    with respx.mock(base_url="https://api.openai.com/v1", assert_all_called=True) as mock:
        route = mock.post("/chat/completions").respond(200, json=completion)
        client = make_client(config, http_client=httpx.AsyncClient())
        gateway = Gateway(config, ledger, run_id="run-1", client=client)
        verdict = run(gateway.call("classifier", PROMPT, Verdict))

    assert verdict.label == "crypto"
    request = route.calls[0].request
    assert request.headers["authorization"] == "Bearer sk-live-abcdefghijklmnop"
    assert request.headers["openai-organization"] == "org-news"
    assert request.headers["x-stainless-retry-count"] == "0"
    [row] = rows(ledger)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (120, 30)
    assert "sk-live" not in json.dumps(row, default=str)


# --- repair ----------------------------------------------------------------------------------------


def test_invalid_json_is_repaired_with_the_exact_parse_error(server, tmp_path, ledger):
    server.add("Sure! Here is the JSON you asked for", GOOD)
    gateway = gateway_for(server, tmp_path, ledger, repair_rounds=1)

    verdict = run(gateway.call("classifier", PROMPT, Verdict))

    assert verdict.label == "crypto"
    repair = server.chat_requests[1].messages
    assert repair[-2] == {"role": "assistant", "content": "Sure! Here is the JSON you asked for"}
    assert "the reply is not valid JSON: Expecting value at line 1 column 1" in repair[-1]["content"]
    assert [r["outcome"] for r in rows(ledger)] == ["invalid", "ok"]


def test_schema_errors_are_fed_back_verbatim(server, tmp_path, ledger):
    broken = {"label": "crypto", "summary": "x", "claims": [{"text": "ab", "confidence": 2, "source_url": None}]}
    server.add(broken, GOOD)
    gateway = gateway_for(server, tmp_path, ledger)

    run(gateway.call("classifier", PROMPT, Verdict))

    feedback = server.chat_requests[1].messages[-1]["content"]
    assert '- claims.0.text: String should have at least 3 characters (got "ab")' in feedback
    assert "- claims.0.confidence: Input should be less than or equal to 1 (got 2)" in feedback


def test_a_validator_violation_is_repaired(server, tmp_path, ledger):
    def summary_names_a_figure(verdict: Verdict) -> list[str]:
        return [] if any(ch.isdigit() for ch in verdict.summary) else ["summary must state the figure from the item"]

    server.add({**GOOD, "summary": "Bitcoin rose."}, {**GOOD, "summary": "Bitcoin rose 5%."})
    gateway = gateway_for(server, tmp_path, ledger)

    verdict = run(gateway.call("classifier", PROMPT, Verdict, validators=[summary_names_a_figure]))

    assert verdict.summary == "Bitcoin rose 5%."
    assert "- summary must state the figure from the item" in server.chat_requests[1].messages[-1]["content"]
    first, second = rows(ledger)
    assert first["outcome"] == "invalid" and first["error"] == "summary must state the figure from the item"
    assert second["outcome"] == "ok"


def test_repairs_run_out_into_invalid_output_with_the_last_object(server, tmp_path, ledger):
    never_ok = lambda verdict: ["claims must not be empty"]  # noqa: E731
    server.add(GOOD, GOOD, GOOD)
    gateway = gateway_for(server, tmp_path, ledger, repair_rounds=2)

    with pytest.raises(InvalidOutput) as caught:
        run(gateway.call("classifier", PROMPT, Verdict, validators=[never_ok]))

    assert caught.value.errors == ["claims must not be empty"]
    assert caught.value.output == Verdict.model_validate(GOOD)
    assert "after 2 repair round(s)" in str(caught.value)
    assert len(server.chat_requests) == 3


# --- finish reasons -------------------------------------------------------------------------------


def test_length_finish_is_output_truncated_not_a_repair(server, tmp_path, ledger):
    server.add(Reply(content='{"label": "crypto", "summ', finish_reason="length", completion_tokens=50))
    gateway = gateway_for(server, tmp_path, ledger)

    with pytest.raises(OutputTruncated) as caught:
        run(gateway.call("classifier", PROMPT, Verdict, max_tokens=50))

    assert "max_tokens=50" in str(caught.value) and caught.value.raw == '{"label": "crypto", "summ'
    assert server.chat_requests[0].body["max_tokens"] == 50
    assert len(server.chat_requests) == 1
    assert rows(ledger)[0]["outcome"] == "truncated"


def test_refusal_is_typed(server, tmp_path, ledger):
    server.add(Reply(refusal="I can't help with that."))
    gateway = gateway_for(server, tmp_path, ledger)

    with pytest.raises(Refused) as caught:
        run(gateway.call("classifier", PROMPT, Verdict))

    assert caught.value.refusal == "I can't help with that."
    assert rows(ledger)[0]["outcome"] == "refused"


# --- retries, breaker, timeouts --------------------------------------------------------------------


def test_rate_limit_waits_for_retry_after_then_succeeds(server, tmp_path, ledger):
    server.add(Fault(429, "Rate limit reached", retry_after="7"), GOOD)
    sleeps = Sleeps()
    gateway = gateway_for(server, tmp_path, ledger, sleeps)

    assert run(gateway.call("classifier", PROMPT, Verdict)).label == "crypto"

    assert sleeps.waits == [7.0]
    assert len(server.chat_requests) == 2
    assert [r["outcome"] for r in rows(ledger)] == ["ok"]


def test_retry_after_forms():
    in_ten_seconds = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    assert 8 <= parse_retry_after({"retry-after": in_ten_seconds}) <= 10
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3600"}) == llm.RETRY_AFTER_CAP_S
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_server_errors_back_off_and_a_storm_opens_the_circuit(server, tmp_path, ledger):
    server.add(*[Fault(500, "upstream exploded")] * 4)
    sleeps = Sleeps()
    gateway = gateway_for(server, tmp_path, ledger, sleeps, max_retries=1, breaker_failures=2)

    for _ in range(2):
        with pytest.raises(ProviderUnavailable, match="HTTP 500: upstream exploded"):
            run(gateway.call("classifier", PROMPT, Verdict))
    assert len(server.chat_requests) == 4 and len(sleeps.waits) == 2
    assert all(0 <= wait <= 20 for wait in sleeps.waits)

    with pytest.raises(CircuitOpen, match="2 consecutive failed calls"):
        run(gateway.call("classifier", PROMPT, Verdict))
    assert len(server.chat_requests) == 4  # failed fast, no request
    assert [r["outcome"] for r in rows(ledger)] == ["error", "error", "circuit_open"]


def test_a_success_resets_the_breaker(server, tmp_path, ledger):
    server.add(Fault(503), GOOD, Fault(503), GOOD)
    gateway = gateway_for(server, tmp_path, ledger, max_retries=0, breaker_failures=2)
    prompts = [PROMPT.model_copy(update={"messages": [{"role": "user", "content": f"item {i}"}]}) for i in range(4)]
    outcomes = []
    for prompt in prompts:
        try:
            run(gateway.call("classifier", prompt, Verdict))
            outcomes.append("ok")
        except ProviderUnavailable:
            outcomes.append("error")
    assert outcomes == ["error", "ok", "error", "ok"] and not gateway.circuit_open


def test_timeouts_are_retried_then_reported(tmp_path, ledger, allow_model_requests):
    with FakeOpenAIServer(delay=10) as slow:
        sleeps = Sleeps()
        gateway = gateway_for(slow, tmp_path, ledger, sleeps, timeout=0.3, max_retries=1)
        with pytest.raises(ProviderUnavailable, match="timed out after 0.3s"):
            run(gateway.call("classifier", PROMPT, Verdict))
        assert len(slow.chat_requests) == 2 and len(sleeps.waits) == 1
    assert rows(ledger)[0]["outcome"] == "error"


def test_a_garbled_body_is_retried(server, tmp_path, ledger):
    server.add(Garbage(), GOOD)
    gateway = gateway_for(server, tmp_path, ledger)
    assert run(gateway.call("classifier", PROMPT, Verdict)).label == "crypto"
    assert len(server.chat_requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_never_retried(server, tmp_path, ledger, status):
    server.add(Fault(status, "Incorrect API key provided: sk-test-ABCDEFGH1234"), GOOD)
    config = make_config(tmp_path, base_url=server.base_url, max_retries=4)
    gateway = Gateway(config, ledger, run_id="run-1", sleep=Sleeps())

    with pytest.raises(RequestRejected) as caught:
        run(gateway.call("classifier", PROMPT, Verdict))

    assert caught.value.status == status
    assert len(server.chat_requests) == 1
    assert "ABCDEFGH1234" not in str(caught.value) and "ABCDEFGH1234" not in json.dumps(rows(ledger), default=str)
    # a bad key stops the run at once; other rejections belong to one request
    assert gateway.circuit_open == (status == 401)


def test_the_api_key_never_reaches_errors_or_the_ledger(server, tmp_path, ledger, monkeypatch):
    secret = "sk-proj-VerySecretKey0000"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    server.add(Fault(401, f"Incorrect API key provided: {secret}. You can find your key at ..."))
    gateway = gateway_for(server, tmp_path, ledger)

    with pytest.raises(RequestRejected) as caught:
        run(gateway.call("classifier", PROMPT, Verdict))

    assert server.chat_requests[0].headers["authorization"] == f"Bearer {secret}"  # it was used...
    assert secret not in str(caught.value)  # ...and shown nowhere
    assert secret not in json.dumps(rows(ledger), default=str)
    with pytest.raises(CircuitOpen) as again:
        run(gateway.call("classifier", PROMPT, Verdict))
    assert secret not in str(again.value)


# --- structured output fallback -------------------------------------------------------------------


def test_json_schema_rejection_falls_back_to_json_object_for_the_run(server, tmp_path, ledger):
    server.add(Fault(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."))
    server.add(GOOD, GOOD)
    gateway = gateway_for(server, tmp_path, ledger)

    assert run(gateway.call("classifier", PROMPT, Verdict)).label == "crypto"
    assert run(gateway.call("classifier", OTHER_PROMPT, Verdict)).label == "crypto"

    formats = [r.response_format["type"] for r in server.chat_requests]
    assert formats == ["json_schema", "json_object", "json_object"]  # remembered, not re-probed
    system = server.chat_requests[1].messages[0]["content"]
    assert system.startswith("Classify news.") and "JSON" in system and '"Claim"' in system
    assert not gateway.circuit_open


def test_json_object_mode_from_config(server, tmp_path, ledger):
    server.add(GOOD)
    gateway = gateway_for(server, tmp_path, ledger, structured_output="json_object")
    run(gateway.call("classifier", PROMPT, Verdict))
    assert server.chat_requests[0].response_format == {"type": "json_object"}


def test_max_tokens_parameter_switches_when_the_model_demands_it(server, tmp_path, ledger):
    server.add(Fault(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                          "Use 'max_completion_tokens' instead."), GOOD)
    gateway = gateway_for(server, tmp_path, ledger)
    run(gateway.call("classifier", PROMPT, Verdict, max_tokens=300))
    assert server.chat_requests[1].body["max_completion_tokens"] == 300
    assert "max_tokens" not in server.chat_requests[1].body


class Tagged(BaseModel):
    label: str
    scores: dict[str, float]


def test_a_schema_that_cannot_be_strict(server, tmp_path, ledger):
    with pytest.raises(UnsupportedSchema, match="Tagged.scores"):
        strict_json_schema(Tagged)
    server.add({"label": "x", "scores": {"crypto": 0.9}})
    gateway = gateway_for(server, tmp_path, ledger)
    assert run(gateway.call("classifier", PROMPT, Tagged)).scores == {"crypto": 0.9}
    assert server.chat_requests[0].response_format == {"type": "json_object"}
    strict_only = gateway_for(server, tmp_path, ledger, structured_output="json_schema")
    with pytest.raises(UnsupportedSchema):
        run(strict_only.call("classifier", PROMPT, Tagged))


# --- accounting, cache, budget ---------------------------------------------------------------------


def test_tokens_and_cost_are_written_to_the_ledger(server, tmp_path, ledger):
    server.add(Reply(content=GOOD, prompt_tokens=1000, completion_tokens=500))
    gateway = gateway_for(server, tmp_path, ledger)

    run(gateway.call("classifier", PROMPT, Verdict, stage="classify"))

    [row] = rows(ledger)
    assert row["run_id"] == "run-1" and row["stage"] == "classify" and row["role"] == "classifier"
    assert row["model"] == "gpt-4o-mini"
    assert (row["prompt_template"], row["prompt_version"]) == ("classifier", "abc123")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1000, 500)
    assert row["cost_usd"] == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert json.loads(row["prompt"]) == PROMPT.messages
    assert json.loads(row["response"]) == GOOD
    assert row["outcome"] == "ok" and row["cache_hit"] is False and row["latency_ms"] > 0
    assert len(row["prompt_hash"]) == 64 and len(row["request_hash"]) == 64
    totals = gateway.totals
    assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (1, 1000, 500)
    assert totals.cost_usd == pytest.approx(row["cost_usd"])
    assert "1 LLM call(s)" in totals.summary()


def test_unknown_model_costs_nothing_and_warns_once(server, tmp_path, ledger, caplog):
    server.add(GOOD, GOOD)
    gateway = gateway_for(server, tmp_path, ledger, models={"classifier": "llama3.1:8b"})
    run(gateway.call("classifier", PROMPT, Verdict))
    run(gateway.call("classifier", OTHER_PROMPT, Verdict))
    assert gateway.totals.cost_usd == 0
    assert len([r for r in caplog.records if "no price for model llama3.1:8b" in r.message]) == 1


def test_fine_tuned_and_dated_models_use_their_base_price(tmp_path, ledger):
    gateway = Gateway(make_config(tmp_path), ledger, backend=TestModel())
    assert gateway.price_for("ft:gpt-4o-mini-2024-07-18:newsroom:house-style:abc123").input == 0.15
    assert gateway.price_for("gpt-4o-2024-08-06").input == 2.50


def test_an_identical_request_is_answered_from_the_cache(server, tmp_path, ledger):
    server.add(Reply(content=GOOD, prompt_tokens=100, completion_tokens=20))
    gateway = gateway_for(server, tmp_path, ledger)

    first = run(gateway.call("classifier", PROMPT, Verdict))
    second = run(gateway.call("classifier", PROMPT, Verdict))

    assert first == second
    assert len(server.chat_requests) == 1
    hit = rows(ledger)[1]
    assert hit["cache_hit"] is True and hit["cost_usd"] == 0 and hit["prompt_tokens"] == 0
    assert gateway.totals.calls == 1 and gateway.totals.cache_hits == 1
    # a new gateway (a later run) still hits
    later = gateway_for(server, tmp_path, ledger)
    assert run(later.call("classifier", PROMPT, Verdict)) == first and len(server.chat_requests) == 1


def test_cache_can_be_off_per_role_and_ignores_answers_that_fail_new_validators(server, tmp_path, ledger):
    server.add(GOOD, GOOD, {**GOOD, "summary": "Bitcoin rose 5%."})
    gateway = gateway_for(server, tmp_path, ledger, cache_disabled_roles=["classifier"])
    run(gateway.call("classifier", PROMPT, Verdict))
    run(gateway.call("classifier", PROMPT, Verdict))
    assert len(server.chat_requests) == 2
    with ledger.begin() as connection:
        assert connection.execute(select(llm_cache)).first() is None

    cached = gateway_for(server, tmp_path, ledger)
    server.add(GOOD)
    run(cached.call("judge", PROMPT, Verdict))
    needs_figure = lambda v: [] if "5%" in v.summary else ["summary must state the figure"]  # noqa: E731
    verdict = run(cached.call("judge", PROMPT, Verdict, validators=[needs_figure]))
    assert verdict.summary == "Bitcoin rose 5%."


def test_budget_stops_further_calls_and_keeps_the_work(server, tmp_path, ledger):
    server.add(Reply(content=GOOD, prompt_tokens=10_000, completion_tokens=10_000))
    gateway = gateway_for(server, tmp_path, ledger, run_budget_usd=0.001)

    done = run(gateway.call("classifier", PROMPT, Verdict))
    with pytest.raises(BudgetExceeded, match=r"budget for this run is spent: \$0\.0075 of \$0\.00"):
        run(gateway.call("classifier", OTHER_PROMPT, Verdict))

    assert done.label == "crypto"
    assert len(server.chat_requests) == 1
    assert [r["outcome"] for r in rows(ledger)] == ["ok", "budget"]
    # the budget is per run: a second gateway for the same run knows what was spent
    with pytest.raises(BudgetExceeded):
        run(gateway_for(server, tmp_path, ledger, run_budget_usd=0.001).call("judge", OTHER_PROMPT, Verdict))


# --- availability, roles, guards ----------------------------------------------------------------------


def test_no_key_and_no_base_url_means_unavailable_without_network(tmp_path, ledger, network_guard):
    gateway = Gateway(make_config(tmp_path), ledger)
    assert gateway.available is False
    assert "no model configured" in gateway.unavailable_reason
    with pytest.raises(NoModelConfigured, match="no model configured"):
        run(gateway.call("classifier", PROMPT, Verdict))
    with pytest.raises(NoModelConfigured):
        make_client(make_config(tmp_path))
    assert network_guard.attempts == [] and rows(ledger) == []


def test_key_sources(tmp_path, ledger, monkeypatch):
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-from-file-000000\n")
    key_file.chmod(0o600)
    from_file = Gateway(make_config(tmp_path, api_key_file="openai.key"), ledger)
    assert from_file.available and llm.resolve_endpoint(from_file.config).api_key == "sk-from-file-000000"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-000000")
    assert llm.resolve_endpoint(make_config(tmp_path)).api_key == "sk-env-000000"


def test_config_base_url_wins_over_the_environment(server, tmp_path, ledger, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    server.add(GOOD)
    gateway = gateway_for(server, tmp_path, ledger)
    run(gateway.call("classifier", PROMPT, Verdict))
    assert len(server.chat_requests) == 1
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    server.add(GOOD)
    from_env = Gateway(make_config(tmp_path, cache_disabled_roles=["classifier"]), ledger, sleep=Sleeps())
    assert from_env.available
    run(from_env.call("classifier", PROMPT, Verdict))
    assert len(server.chat_requests) == 2


def test_real_requests_fail_loudly_unless_allowed(tmp_path, ledger):
    with FakeOpenAIServer() as fake:
        gateway = gateway_for(fake, tmp_path, ledger)
        with pytest.raises(ModelRequestsBlocked, match="ALLOW_MODEL_REQUESTS"):
            run(gateway.call("classifier", PROMPT, Verdict))
        assert fake.requests == []
    assert not issubclass(ModelRequestsBlocked, llm.LLMError)  # stage fallbacks cannot swallow it


def test_writer_uses_the_active_fine_tuned_model(tmp_path, ledger):
    gateway = Gateway(make_config(tmp_path), ledger, backend=TestModel())
    assert gateway.model_for("writer") == "gpt-4o-mini"
    ledger.set_setting("writer_model", "ft:gpt-4o-mini-2024-07-18:newsroom:house-style:abc123")
    assert gateway.model_for("writer") == "ft:gpt-4o-mini-2024-07-18:newsroom:house-style:abc123"
    assert gateway.model_for("reviser") == "gpt-4o-mini"
    with pytest.raises(llm.LLMError, match="unknown LLM role 'poet'"):
        gateway.model_for("poet")


def test_concurrency_is_capped(tmp_path, ledger):
    class SlowBackend:
        in_flight = peak = 0

        async def complete(self, request):
            SlowBackend.in_flight += 1
            SlowBackend.peak = max(SlowBackend.peak, SlowBackend.in_flight)
            await asyncio.sleep(0.01)
            SlowBackend.in_flight -= 1
            return ModelReply(content=json.dumps(GOOD), prompt_tokens=5, completion_tokens=5)

    gateway = Gateway(make_config(tmp_path, concurrency=2, cache_disabled_roles=["classifier"]), ledger,
                      backend=SlowBackend())

    async def many():
        return await asyncio.gather(*(gateway.call("classifier", PROMPT, Verdict) for _ in range(6)))

    assert len(run(many())) == 6
    assert SlowBackend.peak == 2


def test_fake_server_serves_concurrent_requests(tmp_path, ledger, allow_model_requests):
    with FakeOpenAIServer(delay=0.5) as slow:
        gateway = gateway_for(slow, tmp_path, ledger, concurrency=4, cache_disabled_roles=["classifier"])

        async def four():
            return await asyncio.gather(*(gateway.call("classifier", PROMPT, Verdict) for _ in range(4)))

        results = run(four())
        run(gateway.aclose())
    assert len(results) == 4 and slow.max_in_flight >= 2  # sequential serving would never overlap


def test_call_sync_for_synchronous_stages(tmp_path, ledger):
    gateway = Gateway(make_config(tmp_path), ledger, backend=TestModel(responses={Verdict: GOOD}))
    assert gateway.call_sync("classifier", PROMPT, Verdict).label == "crypto"
    assert gateway.call_sync("classifier", PROMPT, Verdict).label == "crypto"  # cache hit, same loop
    gateway.close()


def test_the_network_guard_blocks_outbound_connections(network_guard):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("example.com", 80), timeout=1)
    with pytest.raises(NetworkBlocked):
        socket.socket().connect(("93.184.216.34", 80))
    assert network_guard.attempts == ["resolve example.com", "connect 93.184.216.34:80"]
    network_guard.attempts.clear()  # blocked as intended; don't fail this test at teardown
    listener = socket.create_server(("127.0.0.1", 0))
    socket.create_connection(listener.getsockname(), timeout=1).close()  # loopback still works
    listener.close()


# --- TestModel ------------------------------------------------------------------------------------------


class Source(BaseModel):
    url: str = Field(pattern=r"^https?://")
    outlet: str = Field(min_length=2, max_length=40)


class Section(BaseModel):
    heading: str = Field(max_length=12)
    paragraphs: list[str] = Field(min_length=2, max_length=4)
    sources: list[Source] = []
    words: int = Field(ge=50, le=400)


class Article(BaseModel):
    headline: str = Field(min_length=20, max_length=90)
    kind: Literal["news", "analysis"]
    lead: str
    sections: list[Section] = Field(min_length=1)
    confidence: float = Field(gt=0, lt=1)
    published: datetime
    editor_note: str | None = None
    tags: set[str] = set()


def test_test_model_fills_nested_schemas_validly_and_deterministically(tmp_path, ledger):
    backend = TestModel()
    gateway = Gateway(make_config(tmp_path, cache_disabled_roles=["writer"]), ledger, backend=backend)

    article = run(gateway.call("writer", PROMPT, Article))

    assert 20 <= len(article.headline) <= 90
    assert article.sections[0].words == 50 and len(article.sections[0].paragraphs) == 2
    assert article.sections[0].sources[0].url.startswith("https://")
    assert 0 < article.confidence < 1 and article.editor_note is not None
    assert article == run(gateway.call("writer", PROMPT, Article))
    assert backend.calls == 2 and gateway.totals.calls == 2 and gateway.totals.prompt_tokens > 0


def test_test_model_scripts_drive_the_gateways_repair_and_errors(tmp_path, ledger):
    backend = TestModel(
        responses={Verdict: ["{not json", {**GOOD, "label": "sports"}, GOOD]},
        overrides={Article: {"headline": "Bitcoin tops $100,000 as ETF inflows surge"}},
    )
    gateway = Gateway(make_config(tmp_path, repair_rounds=2), ledger, backend=backend)
    assert run(gateway.call("classifier", PROMPT, Verdict)).label == "crypto"
    assert [r["outcome"] for r in rows(ledger)] == ["invalid", "invalid", "ok"]
    assert "label: Input should be 'crypto', 'markets' or 'other'" in backend.requests[2].messages[-1]["content"]
    assert run(gateway.call("writer", PROMPT, Article)).headline.startswith("Bitcoin tops")

    failing = TestModel(function=lambda request: ProviderUnavailable("scripted outage", status=503))
    gateway = Gateway(make_config(tmp_path, max_retries=2, breaker_failures=1), ledger, backend=failing,
                      sleep=Sleeps())
    with pytest.raises(ProviderUnavailable):
        run(gateway.call("judge", OTHER_PROMPT, Verdict))
    assert failing.calls == 3 and gateway.circuit_open


def test_test_model_says_what_to_do_when_it_cannot_guess(tmp_path, ledger):
    class Ticker(BaseModel):
        symbol: str = Field(pattern=r"^[A-Z]{3,5}USDT$")

    with pytest.raises(TestModelError, match="matching pattern"):
        sample(Ticker)
    assert sample(Ticker, {"symbol": "BTCUSDT"}).symbol == "BTCUSDT"


class Constrained(BaseModel):
    ticker: str = Field(pattern=r"^[A-Z]{3,5}$")
    day: date
    at: datetime
    link: AnyUrl
    count: int = Field(ge=1, lt=10, multiple_of=3)
    share: float = Field(gt=0, le=1)
    maybe: float | None = Field(default=None, ge=0)
    names: list[str] = Field(min_length=1, max_length=3)
    tags: set[str] = set()
    title: str = Field(min_length=5, max_length=40)
    kind: Literal["news", "analysis"]


def test_strict_schemas_keep_in_the_schema_what_strict_mode_accepts_and_hint_the_rest():
    strict = strict_json_schema(Constrained)
    props = strict["properties"]
    assert props["ticker"] == {"type": "string", "pattern": "^[A-Z]{3,5}$"}
    assert props["day"] == {"type": "string", "format": "date"}
    assert props["at"] == {"type": "string", "format": "date-time"}
    # "uri" is not among strict mode's formats: a hint only, or the provider would reject the schema.
    assert "format" not in props["link"] and "format \"uri\"" in props["link"]["description"]
    assert props["count"] == {"type": "integer", "minimum": 1, "exclusiveMaximum": 10, "multipleOf": 3}
    assert props["share"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert {"type": "number", "minimum": 0} in props["maybe"]["anyOf"] and {"type": "null"} in props["maybe"]["anyOf"]
    assert (props["names"]["minItems"], props["names"]["maxItems"]) == (1, 3)
    assert "uniqueItems" not in props["tags"] and "uniqueItems true" in props["tags"]["description"]
    assert "minLength" not in props["title"] and props["title"]["description"] == "Constraints: maxLength 40, minLength 5."
    assert props["kind"] == {"type": "string", "enum": ["news", "analysis"]}
    assert strict["required"] == list(Constrained.model_fields) and strict["additionalProperties"] is False
    from pipeline.services.testing import sample_json

    assert Constrained.model_validate(sample_json(strict))


def test_strict_schemas_still_sample_validly_from_their_hints():
    from pipeline.services.testing import sample_json

    strict = strict_json_schema(Article)
    assert "minLength 20" in strict["properties"]["headline"]["description"]
    assert Article.model_validate(sample_json(strict))  # what the fake server answers by default


def test_totals_per_stage(tmp_path, ledger):
    gateway = Gateway(make_config(tmp_path), ledger, backend=TestModel(responses={Verdict: GOOD}))
    run(gateway.call("classifier", PROMPT, Verdict, stage="classify"))
    run(gateway.call("classifier", PROMPT, Verdict, stage="classify"))
    run(gateway.call("judge", OTHER_PROMPT, Verdict, stage="check"))
    classify, check = gateway.totals_by_stage["classify"], gateway.totals_by_stage["check"]
    assert (classify.calls, classify.cache_hits, check.calls) == (1, 1, 1)
    assert gateway.totals.tokens == classify.tokens + check.tokens > 0


def test_offline_config_never_calls_a_model_even_with_a_key(tmp_path, monkeypatch):
    from pipeline.core.config import parse_config
    from pipeline.core.ledger import Ledger
    from pipeline.services.llm import Gateway

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-offline-0000000000000000")
    config = parse_config({"llm": {"offline": True}, "ledger": {"url": "sqlite:///l.sqlite"}}, root=tmp_path)
    gateway = Gateway(config, Ledger.from_config(config))
    assert not gateway.available
    assert "llm.offline" in gateway.unavailable_reason
