"""Guards for every test: no real model requests, no network beyond this machine.

Kept small on purpose; add shared fixtures below the guards.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import pipeline.services.llm
from pipeline.services.testing import NetworkGuard, allow_model_requests as _allow_model_requests


# The bundled sample feeds (examples/feeds) end on 2026-11-22 at 20:00 UTC. Tests that
# draft from them read the editorial clock at this moment, never the machine's clock.
SAMPLE_AS_OF = datetime(2026, 11, 22, 21, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def network_guard():
    """Non-loopback connections and DNS lookups fail; any attempt fails the test at teardown,
    even when the code under test swallowed the error. Tests may inspect or clear `attempts`."""
    guard = NetworkGuard().install()
    try:
        yield guard
    finally:
        guard.uninstall()
    if guard.attempts:
        pytest.fail(f"test tried to reach the network: {', '.join(sorted(set(guard.attempts)))}")


@pytest.fixture(autouse=True)
def _no_model_requests(monkeypatch):
    """Real provider calls fail loudly (pipeline.services.llm.ModelRequestsBlocked); a developer's own
    OpenAI environment never leaks into tests."""
    monkeypatch.setattr(pipeline.services.llm, "ALLOW_MODEL_REQUESTS", False)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def allow_model_requests():
    """For tests that point the real SDK at respx or tests/fakes/openai_server.py."""
    with _allow_model_requests():
        yield


@pytest.fixture
def ledger(tmp_path):
    """A real SQLite ledger file in the test's temp folder, migrated."""
    from pipeline.core.ledger import Ledger

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield ledger
    ledger.close()
