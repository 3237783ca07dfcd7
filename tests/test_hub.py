"""The Hub check answers within seconds, and online profiles fail fast and clearly without it."""

import time

import pytest
import requests

from utils.models import model_location
from utils.plumbing.hub import HubRepo, HubUnreachableError, hub_reachable, require_hub_or_cache
from utils.profiles import get_profile


@pytest.fixture(autouse=True)
def fresh_hub_answer():
    """hub_reachable() is lru_cached: forget its answer around every test."""
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def test_hub_is_unreachable_with_hf_hub_offline_and_answers_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    started = time.perf_counter()
    reachable = hub_reachable()

    assert reachable is False
    assert time.perf_counter() - started < 1.0


def test_hf_hub_offline_true_also_counts(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("no request when offline"))

    assert hub_reachable() is False


def test_the_hub_request_has_a_timeout_and_a_network_error_means_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def no_network(url, timeout=None, **kwargs):
        calls.append(timeout)
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(requests, "get", no_network)

    assert hub_reachable() is False
    assert calls and calls[0] is not None and calls[0] <= 10  # never waits forever


def test_the_answer_is_cached(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    class Answer:
        status_code = 200
        ok = True

    def answer(url, **kwargs):
        calls.append(url)
        return Answer()

    monkeypatch.setattr(requests, "get", answer)

    assert hub_reachable() is True
    assert hub_reachable() is True
    assert len(calls) == 1


def test_without_the_hub_each_uncached_repository_gets_a_line_with_its_download_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repos = [HubRepo("google/flan-t5-base"), HubRepo("knkarthick/dialogsum", "dataset", "dataset")]

    with pytest.raises(HubUnreachableError) as raised:
        require_hub_or_cache("Profile 'colab'", repos)

    lines = str(raised.value).splitlines()
    assert lines[0].startswith("Profile 'colab' needs the Hugging Face Hub")
    assert "`hf download google/flan-t5-base`" in lines[1]
    assert "`hf download knkarthick/dialogsum --repo-type dataset`" in lines[2]
    assert "COURSE_PROFILE=offline" in lines[3]


def test_online_profile_model_fails_fast_with_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    started = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="COURSE_PROFILE=offline"):
        model_location(get_profile("colab"))

    assert time.perf_counter() - started < 10
