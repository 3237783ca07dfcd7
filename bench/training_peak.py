"""The profiles' training-memory estimate against a measurement: one full fine-tuning step of the
FLAN-T5-base-sized stand-in (the one bench/gpu_check.sh trains) on the CPU, AdamW, float32 weights,
bf16 autocast unless --float32, at each batch size given; each in a fresh process.

Prints, per batch, the peak resident memory minus the memory before the model was built, beside
`utils.profiles.training_peak_bytes` for the same shape and lengths.

    OMP_NUM_THREADS=1 .venv/bin/python bench/training_peak.py --batches 1 2 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def resident_mb() -> float:
    """This process's resident memory now, in MiB (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def measure_one_step(folder: Path, batch: int, source: int, target: int, float32: bool) -> dict:
    """One AdamW step of the model in `folder`; peak resident memory above the start, in MiB."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from utils.apps.benchmark import timed_steps

    before = resident_mb()
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    vocabulary = model.config.vocab_size
    batch_tensors = {"input_ids": torch.randint(3, vocabulary, (batch, source), generator=generator),
                     "labels": torch.randint(3, vocabulary, (batch, target), generator=generator)}
    timed_steps(model, batch_tensors, optimizer, 1, torch.device("cpu"), None if float32 else torch.bfloat16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"batch": batch, "measured_mib": round(peak - before)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--source", type=int, default=512)
    parser.add_argument("--target", type=int, default=128)
    parser.add_argument("--float32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child process: measure one batch
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one_step(args.one, args.batches[0], args.source, args.target, args.float32)))
        return 0

    from utils.apps.hub_standins import FLAN_T5_BASE_DIMENSIONS, write_flan_t5
    from utils.profiles import MODEL_SHAPES, training_peak_bytes

    with tempfile.TemporaryDirectory() as work:
        folder = write_flan_t5(Path(work) / "flan-t5-base", FLAN_T5_BASE_DIMENSIONS)
        print("| batch | source + target tokens | measured, MiB | estimated, MiB | estimate / measured |")
        print("|---|---|---|---|---|")
        for batch in args.batches:
            child = [sys.executable, __file__, "--one", str(folder), "--batches", str(batch),
                     "--source", str(args.source), "--target", str(args.target)] + (["--float32"] if args.float32 else [])
            measured = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            estimated = training_peak_bytes(MODEL_SHAPES["google/flan-t5-base"], batch, args.source, args.target) / 2**20
            print(f"| {batch} | {args.source} + {args.target} | {measured['measured_mib']:,} | {estimated:,.0f} | "
                  f"{estimated / measured['measured_mib']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
