"""The prepared GPU check: three measurements in one command, written as markdown into a folder.

    bash bench/gpu_check.sh OUT_DIR          # on a machine with a CUDA GPU, about 8 minutes on one
    bash bench/gpu_check.sh OUT_DIR --dry    # on the CPU at test sizes (the tests run this)

1. Every notebook under nbval in the `gpu` profile at test sizes (COURSE_SMOKE=1), against
   stand-ins of the Hub repositories seeded into a cache of its own (utils/apps/hub_standins.py), the
   FLAN-T5 one at FLAN-T5-base's real width and depth (random weights: speed and memory, not quality).
2. Notebooks 02 and 03 in the `offline` profile on the GPU (bf16 where it computes it) at the
   profile's real sizes: wall time, peak memory, and each ROUGE against the CPU figure that
   docs/expected_results.toml records (float32).
3. Tokens per second and model FLOP utilization of full fine-tuning of the FLAN-T5-base-sized
   stand-in at batch 32 x 512 (decoder targets of 128 tokens), fp32 master weights, bf16 autocast.

The dry mode keeps every step and shrinks it: notebook 01 only, the tiny decoder-only profile for
step 2, the small stand-in at batch 2 x 64 for step 3. Its numbers mean nothing; that it runs does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Dense bf16 peak of the tensor cores, TFLOP/s, by a substring of the device name (the vendors' sheets).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def markdown_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """The rows as a markdown table of `columns` (blank where a row lacks one)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def environment_line() -> str:
    import torch

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    else:
        device = f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}"


def nbval_notebooks(notebooks: list[Path], hf_home: Path, work: Path) -> list[dict]:
    """Step 1: each notebook under nbval in `gpu` at test sizes, from the stand-in cache."""
    rows = []
    for notebook in notebooks:
        env = {**os.environ, "COURSE_PROFILE": "gpu", "COURSE_SMOKE": "1", "HF_HOME": str(hf_home),
               "HF_HUB_OFFLINE": "1", "COURSE_RUNS_DIR": str(work / "runs-nbval"), "TQDM_DISABLE": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                                 "-p", "no:cacheprovider", str(notebook)], cwd=notebook.parent, env=env,
                                capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if result.returncode:
            (work / f"nbval-{notebook.stem}.log").write_text(result.stdout[-20000:] + result.stderr[-5000:])
        rows.append({"notebook": notebook.stem, "nbval": "passed" if result.returncode == 0 else "FAILED",
                     "seconds": round(seconds, 1)})
    return rows


def offline_notebooks(selected: list[str], profile: str, work: Path) -> list[dict]:
    """Step 2: the notebooks headless in `profile`; time, peak memory and ROUGE against the CPU record."""
    from utils.apps.check_results import compare
    from utils.apps.expected_results import CHECKED_PRECISION, load_expected

    runs = work / "runs-offline"
    env = {**os.environ, "COURSE_PROFILE": profile, "COURSE_RUNS_DIR": str(runs), "TQDM_DISABLE": "1"}
    if profile != "offline":
        env["COURSE_SMOKE"] = "1"
    subprocess.run([sys.executable, "-m", "utils", "prepare"], cwd=PROJECT_ROOT, env=env, check=True,
                   capture_output=True)
    seconds = {}
    for number in selected:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "utils", "run", number], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, check=False)
        seconds[number] = (time.perf_counter() - started, done.returncode == 0)
    results = runs / profile / "results.json"
    records = json.loads(results.read_text()) if results.exists() else []  # a list of records
    recorded = compare(load_expected().of_precision(CHECKED_PRECISION), records, selected)
    figures = {(c.figure.notebook, c.figure.method, c.figure.variant, c.figure.name): c.figure.recorded
               for c in recorded if profile == "offline"}  # the recorded figures are the offline profile's
    rows = []
    for record in records:
        number = record.get("notebook", "")[:2]
        if number not in seconds or "rouge1" not in record:
            continue
        key = (record["notebook"], record["method"], record.get("variant", ""), "rouge1")
        cpu = figures.get(key)
        rows.append({
            "notebook": record["notebook"], "method": record["method"], "variant": record.get("variant", ""),
            "notebook_seconds": round(seconds[number][0], 1), "ran": "yes" if seconds[number][1] else "FAILED",
            "peak_memory_mb": round(record["peak_memory_mb"]) if "peak_memory_mb" in record else "", "rouge1": round(record["rouge1"], 4),
            "rouge1_cpu_recorded": cpu if cpu is not None else "",
            "difference": round(record["rouge1"] - cpu, 4) if cpu is not None else "",
        })
    for number, (spent, ok) in seconds.items():
        if not any(row["notebook"].startswith(number) for row in rows):
            rows.append({"notebook": number, "method": "", "variant": "", "notebook_seconds": round(spent, 1),
                         "ran": "yes" if ok else "FAILED"})
    return rows


def training_throughput(model_folder: Path, batch: int, source_tokens: int, target_tokens: int,
                        steps: int) -> dict:
    """Step 3: full fine-tuning steps of the T5 at `model_folder` on random tokens; tokens/s and MFU."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from utils.apps.benchmark import timed_steps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder, dtype=torch.float32).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    inputs = torch.randint(3, min(vocab, 32000), (batch, source_tokens), generator=generator)
    labels = torch.randint(3, min(vocab, 32000), (batch, target_tokens), generator=generator)
    inputs, labels = inputs.to(device), labels.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, _ = timed_steps(model, {"input_ids": inputs, "labels": labels}, optimizer, steps, device,
                             torch.bfloat16 if bf16 else None)
    per_step = sum(seconds) / len(seconds)
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    decoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("decoder.", "lm_head.")))
    config = model.config
    # 6 FLOPs per weight and token (forward and backward), plus attention's scores and values (12 per head
    # dimension and pair of positions: self-attention in both stacks, cross-attention in the decoder).
    weights = 6 * batch * (encoder * source_tokens + decoder * target_tokens)
    width = config.num_heads * config.d_kv
    attention = 12 * batch * width * (config.num_layers * source_tokens**2
                                      + config.num_decoder_layers * (target_tokens**2 + target_tokens * source_tokens))
    flops = weights + attention
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    return {
        "device": name, "precision": "bf16 autocast, fp32 weights" if bf16 else "fp32",
        "batch": f"{batch} x {source_tokens} (targets {target_tokens})",
        "matmul_weights_millions": round((encoder + decoder) / 1e6, 1),  # the embedding lookup costs no FLOPs
        "seconds_per_step": round(per_step, 4),
        "tokens_per_second": round(batch * (source_tokens + target_tokens) / per_step),
        "model_tflops_per_second": round(flops / per_step / 1e12, 2),
        "mfu": f"{flops / per_step / 1e12 / peak:.1%}" if peak else "n/a (peak of this device unknown)",
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.md (and the logs of any failure)")
    parser.add_argument("--dry", action="store_true", help="on the CPU at test sizes")
    args = parser.parse_args(argv)
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("No CUDA GPU here: run with --dry for the CPU dry run.", file=sys.stderr)
        return 2
    from utils.apps.hub_standins import FLAN_T5, seed_online_cache  # after the refusal: it loads transformers

    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections = [f"# GPU check{' (dry run on the CPU: the numbers mean nothing)' if args.dry else ''}",
                "", environment_line(), ""]

    hf_home = work / "hf-home"
    snapshots = seed_online_cache(hf_home, real_dimensions=not args.dry)
    print(f"stand-ins seeded in {hf_home} ({time.perf_counter() - started:.0f} s)", flush=True)
    nbval = nbval_notebooks(NOTEBOOKS[:1] if args.dry else NOTEBOOKS, hf_home, work)
    sections += ["## Every notebook, `gpu` profile at test sizes, FLAN-T5-base-sized stand-in", "",
                 markdown_table(nbval, ("notebook", "nbval", "seconds")), ""]
    print(f"nbval done ({time.perf_counter() - started:.0f} s)", flush=True)

    profile = "tiny-causal" if args.dry else "offline"
    offline = offline_notebooks(["02"] if args.dry else ["02", "03"], profile, work)
    sections += [f"## Notebooks 02 and 03, `{profile}` profile on this device, against the CPU figures", "",
                 markdown_table(offline, ("notebook", "method", "variant", "ran", "notebook_seconds",
                                          "peak_memory_mb", "rouge1", "rouge1_cpu_recorded", "difference")), ""]
    print(f"offline notebooks done ({time.perf_counter() - started:.0f} s)", flush=True)

    sizes = (2, 64, 16, 2) if args.dry else (32, 512, 128, 10)
    throughput = training_throughput(snapshots[FLAN_T5], *sizes)
    sections += ["## Full fine-tuning of the FLAN-T5-base-sized stand-in", "",
                 markdown_table([throughput], tuple(throughput)), ""]
    sections.append(f"Wall time of the whole check: {time.perf_counter() - started:.0f} s.")
    (work / "gpu_check.md").write_text("\n".join(sections) + "\n", encoding="utf-8")
    print("\n".join(sections))
    failed = [row for row in nbval if row["nbval"] != "passed"] + [row for row in offline if row["ran"] != "yes"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
