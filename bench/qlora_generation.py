"""QLoRA's summaries from the 4-bit model itself against its dequantized bf16 copy, in one run.

    OMP_NUM_THREADS=2 COURSE_PROFILE=offline .venv/bin/python bench/qlora_generation.py --examples 40

Loads the profile's model in 4 bits with notebook 05's adapter (runs/<profile>/adapters/qlora-summary,
which 05 saves; a fresh adapter, which changes nothing, when it is missing) and writes greedy
summaries of the first test dialogues, batched as the notebooks do: from the 4-bit model itself,
where every matrix product dequantizes its layer again, and from `utils.models.inference_copy(model,
"bfloat16")`, where each layer is dequantized once, the adapter merged and the copy cast to bf16
(the copy's making is timed with it). The two are timed alternately, `--repeats` rounds each.
Prints the median seconds, the speed-up, ROUGE-1 of each and how many summaries are the same.
On a CPU without native bf16 the copy is emulated and slow: the course generates from the 4-bit
model there, and so should the comparison be read.
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import pandas as pd
import torch
from peft import PeftModel

from utils import course
from utils.data import load_profile_data
from utils.evaluation import summarize
from utils.generation import reuse_generations_in
from utils.metrics import rouge
from utils.models import inference_copy, load_tokenizer
from utils.plumbing.files import runs_dir
from utils.quantization import add_qlora, load_4bit_model

ROUTES = {"4-bit model": None, "dequantized bf16 copy": "bfloat16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40, help="test dialogues to summarize")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds of each route")
    args = parser.parse_args()
    run = course.start("bench_qlora_generation")
    profile = run.profile
    reuse_generations_in(None)  # every route and round generates
    tokenizer = load_tokenizer(profile)
    test = load_profile_data(profile)["test"]
    test = test.select(range(min(args.examples, len(test))))
    adapter_dir = runs_dir(profile.run_name) / "adapters" / "qlora-summary"
    if adapter_dir.is_dir():
        model = PeftModel.from_pretrained(load_4bit_model(profile), adapter_dir)
        print(f"Adapter: notebook 05's, from {adapter_dir}")
    else:
        model = add_qlora(load_4bit_model(profile), profile, rank=profile.lora_rank)
        print(f"Adapter: a fresh one ({adapter_dir} is missing: run notebook 05 first to time the trained one)")
    model.eval()
    seconds: dict[str, list[float]] = {route: [] for route in ROUTES}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for route, precision in ROUTES.items():
            started = time.perf_counter()
            with torch.no_grad():
                outputs[route] = summarize(model, tokenizer, profile, test["dialogue"], description=route,
                                           precision=precision)
            seconds[route].append(time.perf_counter() - started)
    references = list(test["references"])
    base = median(seconds["4-bit model"])
    rows = [{"generating from": route, "s": f"{median(times):.1f}",
             "speed-up": f"{base / median(times):.2f}x" if route != "4-bit model" else "",
             "ROUGE-1": f"{rouge(outputs[route], references)['rouge1']:.4f}"} for route, times in seconds.items()]
    same = sum(a == b for a, b in zip(*outputs.values()))
    print(f"\n{profile.name}: {len(test)} test dialogues, batches of {profile.eval_batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} round(s)\n")
    print(pd.DataFrame(rows).set_index("generating from").to_markdown())
    print(f"\nThe same summary from both: {same} of {len(test)}")


if __name__ == "__main__":
    main()
