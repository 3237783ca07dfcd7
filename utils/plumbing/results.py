"""What each notebook measured, in runs/<profile>/results.json (a list of records)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from utils.plumbing.files import runs_dir, write_json_atomic

METHODS = ("base", "zero_shot", "one_shot", "few_shot", "full", "multitask", "feature_extraction", "lora", "prompt_tuning", "qlora", "ppo", "dpo", "grpo", "reward_model")


def results_path(profile_name: str) -> Path:
    return runs_dir(profile_name) / "results.json"


def load_results(profile_name: str) -> list[dict]:
    """All records of a profile (an empty list when nothing ran yet)."""
    path = results_path(profile_name)
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"))


def _clean(value):
    """JSON-safe numbers: floats rounded to 6 places, NaN and infinities as None."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def record_result(
    profile_name: str,
    notebook: str,
    method: str,
    model: str,
    variant: str = "",
    **measured,
) -> dict:
    """Add or replace the record for (notebook, method, variant) and rewrite results.json atomically."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Known: {', '.join(METHODS)}.")
    record = {"notebook": notebook, "method": method, "profile": profile_name, "model": model}
    if variant:
        record["variant"] = variant
    record.update({key: _clean(value) for key, value in measured.items()})
    key = (notebook, method, variant)
    kept = [r for r in load_results(profile_name) if (r["notebook"], r["method"], r.get("variant", "")) != key]
    write_json_atomic(results_path(profile_name), [*kept, record])
    return record
