"""LoRA adapters and soft prompts on both tiny model families."""

import pytest
import torch

from utils.adapters import (
    add_lora,
    add_prompt_tuning,
    attention_targets,
    nearest_tokens,
    soft_prompt,
    train_last_blocks_only,
)
from utils.models import count_parameters, load_model_and_tokenizer
from utils.profiles import get_profile


def test_lora_trains_only_the_low_rank_matrices_on_query_and_value(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    _, total = count_parameters(model)

    wrapped = add_lora(model, rank=2)

    trainable_names = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable_names and all("lora_" in name for name in trainable_names)
    assert all(any(f".{target}." in name for target in attention_targets(model)) for name in trainable_names)
    assert count_parameters(wrapped)[0] < total / 10


@pytest.mark.parametrize("dropout, drawn", [(0.05, True), (0.0, False)])
def test_lora_dropout_draws_random_masks_while_training_only_when_above_zero(tiny_profile, dropout, drawn):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    wrapped = add_lora(model, rank=2, dropout=dropout).train()
    lora_input = next(m for name, m in wrapped.named_modules() if name.endswith("lora_dropout.default"))
    x = torch.ones(4, 64)

    assert (not torch.equal(lora_input(x), x)) is drawn
    assert torch.equal(lora_input.eval()(x), x)


def test_the_offline_profile_trains_lora_without_dropout_and_the_online_ones_with_the_labs():
    assert get_profile("offline").lora_dropout == 0.0
    assert get_profile("colab").lora_dropout == get_profile("gpu").lora_dropout == 0.05


def test_lora_on_all_linear_layers_adapts_every_linear_layer_but_the_output_head(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    linear_layers = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    head = {name for name in linear_layers if name.endswith("lm_head")}

    wrapped = add_lora(model, rank=2, targets="all-linear")

    adapted = {name.removeprefix("base_model.model.") for name, module in wrapped.named_modules() if hasattr(module, "lora_A")}
    assert head and adapted == linear_layers - head
    assert len(adapted) > 2 * len(attention_targets(model))  # more than query and value


def test_feature_extraction_trains_the_last_block_and_final_norm_and_nothing_else(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    _, total = count_parameters(model)
    blocks = "decoder.block." if model.config.is_encoder_decoder else "model.layers."
    last = max(int(name.removeprefix(blocks).split(".")[0]) for name, _ in model.named_parameters() if blocks in name)

    train_last_blocks_only(model, blocks=1)

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f"{blocks}{last}." in name or "norm" in name for name in trainable), trainable
    assert not any("embed" in name or "shared" in name or "encoder" in name for name in trainable)
    assert 0 < count_parameters(model)[0] < total


def test_feature_extraction_of_more_blocks_than_the_model_has_is_refused(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer

    with pytest.raises(ValueError, match="blocks must be between 1 and"):
        train_last_blocks_only(model, blocks=99)


def test_lora_targets_other_than_attention_or_all_linear_are_refused(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer

    with pytest.raises(ValueError, match="all-linear"):
        add_lora(model, targets="mlp")


def test_a_soft_prompt_trains_virtual_tokens_times_the_embedding_width(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    width = model.get_input_embeddings().weight.shape[1]

    wrapped = add_prompt_tuning(model, tokenizer, num_virtual_tokens=5)

    # One soft prompt before the input in both families: PEFT's second one for an encoder-decoder's
    # decoder would be trained but left out by its generate (see utils.adapters.prompt_tuning_config).
    assert count_parameters(wrapped)[0] == 5 * width
    assert soft_prompt(wrapped).shape == (5, width)


def test_a_soft_prompt_from_text_starts_at_the_texts_token_embeddings(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    text = "summary of the dialogue"
    ids = tokenizer(text)["input_ids"]  # with the tokenizer's special tokens, as PEFT encodes it
    embeddings = model.get_input_embeddings().weight.detach().clone()

    wrapped = add_prompt_tuning(model, tokenizer, num_virtual_tokens=len(ids), init_text=text)

    rows = soft_prompt(wrapped).shape[0]  # twice len(ids) for an encoder-decoder: the text repeats
    expected = (ids * 2)[:rows]
    assert torch.allclose(soft_prompt(wrapped), embeddings[expected])
    assert [row[0] for row in nearest_tokens(wrapped, tokenizer, k=1)] == [tokenizer.decode([i]) for i in expected]


def test_a_random_soft_prompt_is_not_the_text_one(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = tokenizer("summary of the dialogue", add_special_tokens=False)["input_ids"]
    embeddings = model.get_input_embeddings().weight.detach().clone()

    wrapped = add_prompt_tuning(model, tokenizer, num_virtual_tokens=len(ids))

    assert not torch.allclose(soft_prompt(wrapped)[: len(ids)], embeddings[ids])


def test_the_soft_prompt_changes_the_output_while_the_model_stays_frozen(tiny_profile):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    wrapped = add_prompt_tuning(model, tokenizer, num_virtual_tokens=4)
    batch = tokenizer(["hello there"], return_tensors="pt")
    labels = batch["input_ids"].clone()
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1.0)
    prompt_before = soft_prompt(wrapped).clone()

    wrapped(**batch, labels=labels).loss.backward()
    optimizer.step()

    assert not torch.allclose(soft_prompt(wrapped), prompt_before)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), f"{name} changed"


def test_lora_on_an_unknown_architecture_says_where_to_add_it():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=32))

    with pytest.raises(ValueError, match="ATTENTION_QUERY_VALUE"):
        add_lora(model)


def test_an_adapter_starts_the_same_whatever_the_process_drew_before_and_leaves_its_generators_alone(tiny_profile):
    def lora_start(draws_before):
        model, _ = load_model_and_tokenizer(tiny_profile)
        torch.rand(draws_before)  # a notebook's earlier cells, or a benchmark's earlier methods
        adapted = add_lora(model, rank=4)
        return {name: p.detach().clone() for name, p in adapted.named_parameters() if p.requires_grad}

    first, second = lora_start(1), lora_start(1000)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    add_lora(load_model_and_tokenizer(tiny_profile)[0], rank=4)
    assert torch.equal(torch.rand(3), expected)  # the process's random stream is not reset by it


def test_notebook_03s_visible_lora_config_is_the_adapter_add_lora_builds(tiny_profile):
    # Notebook 03 builds its first adapter with LoraConfig + get_peft_model in sight, and add_lora
    # afterwards: the two must be one adapter, so that trainings reused by name compare truthfully.
    from peft import LoraConfig, get_peft_model

    from utils.adapters import ADAPTER_SEED
    from utils.families import peft_task_type

    by_hand, _ = load_model_and_tokenizer(tiny_profile)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=tiny_profile.lora_dropout,
                        target_modules=attention_targets(by_hand),
                        task_type=peft_task_type(by_hand.config.is_encoder_decoder))
    torch.manual_seed(ADAPTER_SEED)
    by_hand = get_peft_model(by_hand, config)
    by_add_lora = add_lora(load_model_and_tokenizer(tiny_profile)[0], rank=4, dropout=tiny_profile.lora_dropout)

    assert by_hand.peft_config["default"].to_dict() == by_add_lora.peft_config["default"].to_dict()
    mine, theirs = by_hand.state_dict(), by_add_lora.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[name], theirs[name]) for name in mine)


def test_method_record_counts_the_base_models_weights_and_the_adapters_apart(tiny_model_and_tokenizer):
    from types import SimpleNamespace

    from utils.adapters import method_record

    model, _ = tiny_model_and_tokenizer
    _, base = count_parameters(model)
    wrapped = add_lora(model, rank=2)
    training = SimpleNamespace(train_seconds=3.0, tokens_per_second=100.0, peak_memory_mb=50.0)

    record = method_record({"rouge1": 0.3}, training, wrapped, rank=2)

    assert record["total_params"] == base
    assert 0 < record["trainable_params"] == count_parameters(wrapped)[0] < base
    assert (record["rouge1"], record["rank"], record["train_seconds"]) == (0.3, 2, 3.0)


def test_notebook_04s_visible_prompt_tuning_config_is_the_soft_prompt_add_prompt_tuning_builds(tiny_profile):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    from utils.adapters import ADAPTER_SEED
    from utils.families import peft_task_type
    from utils.prompts import SOFT_PROMPT_INIT_TEXT

    by_hand, tokenizer = load_model_and_tokenizer(tiny_profile)
    config = PromptTuningConfig(task_type=peft_task_type(by_hand.config.is_encoder_decoder), num_virtual_tokens=6,
                                prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=SOFT_PROMPT_INIT_TEXT,
                                tokenizer_name_or_path=tokenizer.name_or_path, num_transformer_submodules=1)
    torch.manual_seed(ADAPTER_SEED)
    by_hand = get_peft_model(by_hand, config)
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    by_add_prompt_tuning = add_prompt_tuning(model, tokenizer, 6, init_text=SOFT_PROMPT_INIT_TEXT)

    assert by_hand.peft_config["default"].to_dict() == by_add_prompt_tuning.peft_config["default"].to_dict()
    assert torch.equal(soft_prompt(by_hand), soft_prompt(by_add_prompt_tuning))
