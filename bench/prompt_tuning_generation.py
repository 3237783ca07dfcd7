"""Does PEFT prompt tuning generate correctly under the installed transformers? (A reproduction for upstream.)

    .venv/bin/python bench/prompt_tuning_generation.py [MODEL_FOLDER_OR_HUB_ID]

Plain transformers and PEFT, nothing of the course's code, so it can be pasted into an issue.
A soft prompt initialised from a text T (text init, as many virtual tokens as T has tokens) is,
before any training, exactly the embeddings of T's tokens. Greedy decoding with it must therefore
give the same token ids as the base model given T's tokens followed by the input. The script
prints both, and the course's own way round PEFT's `generate` (the soft prompt passed as
`inputs_embeds` to the base model's `generate`), and exits 1 when PEFT's output differs.

Default model: SmolLM2-135M-Instruct as the course converts it (`python -m utils prepare` in the
offline profile writes it); upstream, `HuggingFaceTB/SmolLM2-135M-Instruct` shows the same.
"""

from __future__ import annotations

import sys

import peft
import torch
import transformers
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

INIT_TEXT = "Summarize the following conversation in one or two sentences."
DIALOGUE = "Summarize the following conversation.\n\n#Person1#: Is the train to Leeds on time?\n#Person2#: No, it is 20 minutes late.\n\nSummary:"
NEW_TOKENS = 12


def default_model() -> str:
    from utils.models import ensure_smollm2  # only to find the converted offline model

    return str(ensure_smollm2())


def main() -> int:
    location = sys.argv[1] if len(sys.argv) > 1 else default_model()
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).eval()
    options = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)

    text_ids = tokenizer(INIT_TEXT)["input_ids"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": DIALOGUE}], add_generation_prompt=True, tokenize=False)
    input_ids = tokenizer(chat, return_tensors="pt", add_special_tokens=False)["input_ids"]
    prepended = torch.tensor([text_ids + input_ids[0].tolist()])
    with torch.no_grad():
        expected = model.generate(prepended, attention_mask=torch.ones_like(prepended), **options)[0, prepended.shape[1]:]

    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=len(text_ids), prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=INIT_TEXT, tokenizer_name_or_path=location,
    )
    tuned = get_peft_model(model, config).eval()
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        through_peft = tuned.generate(input_ids=input_ids, attention_mask=mask, **options)[0, input_ids.shape[1]:]
        soft_prompt = tuned.get_prompt(batch_size=1)
        embeds = torch.cat([soft_prompt, tuned.get_input_embeddings()(input_ids)], dim=1)
        embeds_mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        through_embeds = tuned.get_base_model().generate(inputs_embeds=embeds, attention_mask=embeds_mask, **options)[0]

    peft_ok = through_peft.tolist() == expected.tolist()
    embeds_ok = through_embeds.tolist() == expected.tolist()
    print(f"base model, T prepended:          {expected.tolist()}  {tokenizer.decode(expected)!r}")
    print(f"PEFT generate with the soft prompt: {through_peft.tolist()}  {tokenizer.decode(through_peft)!r}"
          f"  {'same' if peft_ok else 'DIFFERENT'}")
    print(f"base generate, soft prompt as inputs_embeds: {through_embeds.tolist()}  "
          f"{'same' if embeds_ok else 'DIFFERENT'}")
    return 0 if peft_ok else 1


if __name__ == "__main__":
    sys.exit(main())
