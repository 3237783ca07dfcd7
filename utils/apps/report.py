"""runs/<profile>/REPORT.md: tables from results.json and plots beside them."""

from __future__ import annotations

import json
from pathlib import Path

from utils.metrics import ROUGE_TYPES
from utils.plumbing.files import runs_dir, write_text_atomic
from utils.plumbing.results import METHODS, load_results

TABLE_COLUMNS = (
    *ROUGE_TYPES,
    "rouge1_mean_ref",  # the mean over references (DialogSum's test set has three), as the original lab scored
    "rougeL_mean_ref",
    "trainable_params",
    "total_params",
    "saved_bytes",
    "peak_memory_mb",
    "train_seconds",
    "tokens_per_second",
    "bleu",
    "perplexity",
    "second_task_before",  # forgetting: short-answer accuracy before and after, and the paired interval of the change
    "second_task_after",
    "second_task_ci_low",
    "second_task_ci_high",
    "benchmark_before",  # the lm-eval benchmark's accuracy, before and after
    "benchmark_after",
)


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(records: list[dict], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """One row per record (notebook, method, variant), only the columns some record has."""
    present = [c for c in columns if any(c in r for r in records)]
    header = ["notebook", "method", *present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        method = r["method"] + (f" ({r['variant']})" if r.get("variant") else "")
        lines.append("| " + " | ".join([r["notebook"], method, *(_format(r.get(c)) for c in present)]) + " |")
    return "\n".join(lines)


def sorted_records(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["notebook"], METHODS.index(r["method"]), bool(r.get("variant")),
                                          r.get("rank") or 0, r.get("variant", "")))


def plot_rouge_by_method(records: list[dict], path: Path) -> Path | None:
    """Grouped ROUGE bars per method (records without a variant); None when there is nothing to plot."""
    import matplotlib.pyplot as plt

    from utils.plots import plot_bars

    main = [r for r in sorted_records(records) if "rouge1" in r and not r.get("variant")]
    if not main:
        return None
    values = {f"{r['method']}\n({r['notebook'][:2]})": {name: r.get(name) or 0.0 for name in ROUGE_TYPES} for r in main}
    figure = plot_bars(values, "F1", "ROUGE by method (test split)")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# The methods the course compares on one table, in teaching order, and what the table shows.
COMPARED_METHODS = ("base", "full", "feature_extraction", "lora", "prompt_tuning", "qlora")
COMPARISON_COLUMNS = (*ROUGE_TYPES, "trainable_params", "trainable_percent", "saved_bytes", "peak_memory_mb",
                      "train_seconds", "tokens_per_second")


def method_comparison(records: list[dict]) -> list[dict]:
    """One record per compared method (its main result, from whichever notebook recorded it last), with % trainable."""
    latest: dict[str, dict] = {}
    for record in records:
        if record["method"] in COMPARED_METHODS and not record.get("variant") and "rouge1" in record:
            latest[record["method"]] = record
    rows = []
    for method in COMPARED_METHODS:
        if method in latest:
            row = dict(latest[method])
            if row.get("trainable_params") and row.get("total_params"):
                row["trainable_percent"] = 100 * row["trainable_params"] / row["total_params"]
            rows.append(row)
    return rows


def plot_method_comparison(rows: list[dict]):
    """ROUGE-1/ROUGE-L, trainable share and peak memory per method, side by side; None without rows."""
    import matplotlib.pyplot as plt

    if not rows:
        return None
    names = [r["method"] for r in rows]
    figure, (quality, share, memory) = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.4
    for offset, key in ((-width / 2, "rouge1"), (width / 2, "rougeL")):
        quality.bar([i + offset for i in range(len(rows))], [r.get(key) or 0.0 for r in rows], width, label=key)
    quality.set_title("quality (test split)")
    quality.set_ylabel("F1")
    quality.legend(fontsize="small")
    share.bar(names, [r.get("trainable_percent") or 0.0 for r in rows], color="tab:green")
    share.set_yscale("log")
    share.set_title("trainable parameters (% of model, log)")
    memory.bar(names, [r.get("peak_memory_mb") or 0.0 for r in rows], color="tab:red")
    memory.set_title("peak memory while training (MB)")
    for axis in (quality, share, memory):
        axis.set_xticks(range(len(rows)), names, rotation=20, fontsize="small")
    figure.tight_layout()
    return figure


# Notebooks 06-07: what alignment changed and what it cost, and how well the reward model ranks.
ALIGNMENT_COLUMNS = ("toxicity_before_mean", "toxicity_after_mean", "toxicity_difference", "ci_low", "ci_high",
                     "ci_excludes_zero", "rouge1_before", "rouge1_after", "ppo_steps", "dpo_steps", "seconds",
                     "reward_last", "kl_last", "toxicity_last", "rouge1_probe")
GRPO_COLUMNS = ("toxicity_before_mean", "toxicity_after_mean", "ci_low", "ci_high", *(
    f"pass_{check}_{part}" for check in ("length_in_band", "names_the_speakers", "copies_no_sentence")
    for part in ("before", "after", "ci_low", "ci_high")), "rouge1_before", "rouge1_after", "grpo_steps", "seconds")
REWARD_MODEL_COLUMNS = ("test_accuracy", "untrained_accuracy", "longer_is_better_accuracy", "detox_neutral_preferred",
                        "train_pairs", "test_pairs", "backbone", "train_seconds", "saved_bytes")


def write_report(profile_name: str, environment: dict | None = None) -> Path:
    """Write runs/<profile>/REPORT.md (and its plots) from results.json; return its path."""
    folder = runs_dir(profile_name)
    records = sorted_records(load_results(profile_name))
    lines = [f"# Course report: profile `{profile_name}`", ""]
    if environment:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in environment.items()]
        lines.append("")
    status_path = folder / "status.json"
    if status_path.exists():
        status = json.loads(status_path.read_text(encoding="utf-8"))
        lines += ["## Notebooks", "", "| notebook | status | seconds | slowest cells (number: seconds) | machine | "
                  "its speed before / after (GFLOP/s) |", "|---|---|---|---|---|---|"]
        for name, entry in sorted(status.items()):
            slowest = ", ".join(f"{c['cell']}: {c['seconds']:.0f}" for c in entry.get("slowest_cells", []))
            speed = " / ".join(f"{value:.0f}" for value in entry.get("matmul_gflops_before_after", []))
            lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', 0):.0f} | {slowest} | "
                         f"{entry.get('machine', '')} | {speed} |")
        lines += ["", "Speed: float32 512 x 512 matrix products for a second, just before and just after the "
                  "notebook (`utils.plumbing.measure.matrix_product_gflops`). Shared machines speed up and slow "
                  "down; compare two runs' seconds with their speeds in mind.", ""]
    if not records:
        lines.append("No results recorded yet.")
    else:
        summarization = [r for r in records if any(c in r for c in TABLE_COLUMNS)]
        if summarization:
            lines += ["## Results", "", markdown_table(summarization), ""]
        plot = plot_rouge_by_method(records, folder / "rouge_by_method.png")
        if plot:
            lines += ["![ROUGE by method](rouge_by_method.png)", ""]
        comparison = method_comparison(records)
        if len(comparison) > 1:
            import matplotlib.pyplot as plt

            lines += ["## Every method on the same data", "",
                      markdown_table(comparison, COMPARISON_COLUMNS), ""]
            figure = plot_method_comparison(comparison)
            figure.savefig(folder / "method_comparison.png", dpi=110)
            plt.close(figure)
            lines += ["![Every method compared](method_comparison.png)", ""]
        ppo = [r for r in records if r["method"] == "ppo"]
        if ppo:
            lines += ["## Alignment with PPO (notebook 06)", "",
                      "Toxicity of sampled summaries of held-out dialogues before and after PPO, the 95% interval "
                      "of the paired difference, and ROUGE-1 of greedy summaries before and after; the variant "
                      "without KL penalty shows reward hacking.", "", markdown_table(ppo, ALIGNMENT_COLUMNS), ""]
        dpo = [r for r in records if r["method"] == "dpo"]
        if dpo:
            lines += ["## Alignment with DPO (notebook 08)", "",
                      "The same measurements after direct preference optimization on the detox pairs.", "",
                      markdown_table(dpo, ALIGNMENT_COLUMNS), ""]
        grpo = [r for r in records if r["method"] == "grpo"]
        if grpo:
            lines += ["## Alignment with GRPO (notebook 09)", "",
                      "The same measurements after GRPO on rewards a program checks plus the toxicity score, and "
                      "each check's pass rate before and after with its 95% paired interval.", "",
                      markdown_table(grpo, GRPO_COLUMNS), ""]
        reward_models = [r for r in records if r["method"] == "reward_model"]
        if reward_models:
            lines += ["## Reward model (notebook 07)", "", "Share of held-out preference pairs ranked right.", "",
                      markdown_table(reward_models, REWARD_MODEL_COLUMNS), ""]
    path = folder / "REPORT.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
