"""Training learns, records its losses, and reuses a finished run only when nothing changed."""

import pytest
import torch

from utils.adapters import add_lora
from utils.data import load_profile_data, tokenize_for_training, training_collator
from utils.metrics import perplexity
from utils.models import load_model_and_tokenizer
from utils.plumbing.run_state import FINISHED
from utils.training import train

HIGH_LEARNING_RATE = 1e-2


def weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_weights(first, second):
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def small_data(profile, tokenizer):
    """Eight training and four validation examples, tokenized afresh on every call."""
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"].select(range(8)), tokenizer, profile)
    eval_set = tokenize_for_training(data["validation"].select(range(4)), tokenizer, profile)
    return train_set, eval_set


def fresh_training(profile, learning_rate=HIGH_LEARNING_RATE):
    """A newly loaded model, trained on the small data under the run name "full"."""
    model, tokenizer = load_model_and_tokenizer(profile)
    train_set, eval_set = small_data(profile, tokenizer)
    run = train(model, tokenizer, profile, "full", train_set, eval_set, learning_rate=learning_rate)
    return model, run


def test_training_lowers_perplexity_on_its_data_and_records_losses(tiny_profile, tiny_model_and_tokenizer, isolated_runs):
    model, tokenizer = tiny_model_and_tokenizer
    train_set, eval_set = small_data(tiny_profile, tokenizer)
    batch = training_collator(tokenizer, model)([train_set[i] for i in range(len(train_set))])
    before = perplexity(model, [batch])

    run = train(model, tokenizer, tiny_profile, "full", train_set, eval_set, learning_rate=HIGH_LEARNING_RATE)

    assert run.model is model and not run.reused
    assert perplexity(model, [batch]) < 0.8 * before
    train_losses, eval_losses = run.losses()
    assert [step for step, _ in train_losses] == list(range(1, tiny_profile.max_steps + 1))
    assert eval_losses and eval_losses[-1][0] == tiny_profile.max_steps
    assert train_losses[-1][1] < train_losses[0][1]
    assert run.output_dir == isolated_runs / tiny_profile.name / "checkpoints" / "full"
    assert (run.output_dir / FINISHED).exists()
    assert list((run.output_dir / "final").glob("*.safetensors"))
    assert run.train_seconds > 0 and run.tokens_per_second > 0 and run.peak_memory_mb > 0
    assert 0 < run.step_seconds < run.train_seconds  # evaluation and checkpoints are timed apart
    assert run.other_seconds == run.train_seconds - run.step_seconds
    assert "s in training steps" in run.summary()


def test_a_training_without_a_validation_set_measures_no_loss_curve_and_trains_the_same_weights(tiny_profile):
    from utils.adapters import add_lora

    trained = {}
    for name, with_validation in (("validated", True), ("unvalidated", False)):
        model, tokenizer = load_model_and_tokenizer(tiny_profile)
        model = add_lora(model, rank=4)  # LoRA's dropout draws random numbers: evaluating must not shift them
        train_set, eval_set = small_data(tiny_profile, tokenizer)
        run = train(model, tokenizer, tiny_profile, name, train_set, eval_set if with_validation else None,
                    learning_rate=HIGH_LEARNING_RATE)
        trained[name] = (weights(model), run)

    (validated, validated_run), (unvalidated, unvalidated_run) = trained["validated"], trained["unvalidated"]
    assert validated_run.losses()[1] and not unvalidated_run.losses()[1]
    assert same_weights(validated, unvalidated)


def test_training_again_with_the_same_arguments_reuses_the_finished_run(tiny_profile):
    first_model, first_run = fresh_training(tiny_profile)

    second_model, second_run = fresh_training(tiny_profile)  # new model object, data tokenized again

    assert second_run.reused is True
    assert same_weights(weights(second_model), weights(first_model))
    assert second_run.history == first_run.history
    assert second_run.train_seconds == first_run.train_seconds
    assert second_run.step_seconds == first_run.step_seconds and "reused" in second_run.summary()


def test_a_different_learning_rate_is_not_taken_for_the_finished_run(tiny_profile):
    fresh_training(tiny_profile)

    _, other_run = fresh_training(tiny_profile, learning_rate=HIGH_LEARNING_RATE / 3)

    assert other_run.reused is False


def test_an_adapter_trained_with_other_dropout_is_not_taken_for_the_finished_run(tiny_profile):
    def lora_training(dropout):
        model, tokenizer = load_model_and_tokenizer(tiny_profile)
        train_set, eval_set = small_data(tiny_profile, tokenizer)
        return train(add_lora(model, rank=2, dropout=dropout), tokenizer, tiny_profile, "lora", train_set, eval_set,
                     learning_rate=HIGH_LEARNING_RATE)

    lora_training(0.05)

    assert lora_training(0.05).reused is True
    assert lora_training(0.0).reused is False


def test_a_different_learning_rate_trains_from_the_start(tiny_profile):
    first_model, first_run = fresh_training(tiny_profile)

    other_model, other_run = fresh_training(tiny_profile, learning_rate=HIGH_LEARNING_RATE / 3)

    assert not same_weights(weights(other_model), weights(first_model))
    assert other_run.history != first_run.history
    assert other_run.tokens_per_second > 0


def test_full_fine_tuning_of_a_bf16_model_keeps_fp32_master_weights_so_small_updates_count(one_thread):
    """lr 1e-4 on a bf16 weight above ~0.05 rounds to nothing: the weights must train in float32."""
    from dataclasses import replace

    from utils.profiles import get_profile

    profile = replace(get_profile("tiny"), dtype="bfloat16", max_steps=2)
    model, tokenizer = load_model_and_tokenizer(profile)
    assert next(model.parameters()).dtype == torch.bfloat16
    before = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    train_set, eval_set = small_data(profile, tokenizer)

    train(model, tokenizer, profile, "full-bf16", train_set, eval_set, learning_rate=1e-4)

    large = changed = 0
    for name, parameter in model.named_parameters():
        mask = before[name].abs() > 0.05
        large += int(mask.sum())
        changed += int((parameter.detach().float()[mask] != before[name][mask]).sum())
    assert changed / large > 0.5
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("mixed_precision, computed_in", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_mixed_precision_computes_in_bf16_while_the_weights_train_in_float32(one_thread, mixed_precision, computed_in):
    from dataclasses import replace

    from utils.profiles import get_profile

    profile = replace(get_profile("tiny"), mixed_precision=mixed_precision, max_steps=2)
    model, tokenizer = load_model_and_tokenizer(profile)
    computed = set()
    first_linear = next(module for module in model.modules() if isinstance(module, torch.nn.Linear))
    hook = first_linear.register_forward_hook(lambda module, inputs, output: computed.add(output.dtype))
    train_set, eval_set = small_data(profile, tokenizer)

    run = train(model, tokenizer, profile, f"full-{mixed_precision}", train_set, eval_set, HIGH_LEARNING_RATE)
    hook.remove()

    assert computed == {computed_in}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert run.losses()[0][-1][1] < run.losses()[0][0][1]


def test_after_mixed_precision_training_the_model_computes_in_float32_as_when_loaded_from_its_checkpoint(one_thread):
    from dataclasses import replace

    from utils.profiles import get_profile

    profile = replace(get_profile("tiny"), mixed_precision="bf16", max_steps=2)
    model, tokenizer = load_model_and_tokenizer(profile)
    train_set, eval_set = small_data(profile, tokenizer)
    train(model, tokenizer, profile, "full-bf16-then-fp32", train_set, eval_set, HIGH_LEARNING_RATE)
    computed = set()
    first_linear = next(module for module in model.modules() if isinstance(module, torch.nn.Linear))
    hook = first_linear.register_forward_hook(lambda module, inputs, output: computed.add(output.dtype))

    with torch.no_grad():
        labels = tokenizer(["A summary."], return_tensors="pt")["input_ids"]
        model(**tokenizer(["A dialogue."], return_tensors="pt"), labels=labels)
    hook.remove()

    assert computed == {torch.float32}  # accelerate's autocast wrapper is gone


def test_a_frozen_bf16_base_stays_bf16_while_its_adapter_trains_in_fp32():
    from dataclasses import replace

    from utils.adapters import add_lora
    from utils.profiles import get_profile
    from utils.training import keep_fp32_master_weights

    profile = replace(get_profile("tiny"), dtype="bfloat16")
    model = add_lora(load_model_and_tokenizer(profile)[0], rank=4)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.bfloat16()

    keep_fp32_master_weights(model)

    dtypes = {("lora_" in name, p.dtype) for name, p in model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


DIALOGSUM_TRAIN_ROWS = 12460  # the `gpu` profile trains on all of DialogSum's training split


@pytest.mark.parametrize("name", ["offline", "colab", "gpu"])
def test_every_training_run_of_a_course_profile_makes_at_least_8_optimizer_steps(name):
    from math import ceil

    from utils.profiles import get_profile
    from utils.rl_data import preference_pairs
    from utils.training import MIN_OPTIMIZER_STEPS, batch_and_steps

    profile = get_profile(name)
    train_rows = profile.train_examples or DIALOGSUM_TRAIN_ROWS
    slice_rows = min(train_rows, profile.sweep_train_examples)
    ppo_updates_per_step = profile.ppo_batch_size // profile.ppo_mini_batch_size * profile.ppo_epochs
    steps = {
        "02 full, 03 LoRA, 04 prompt tuning, 05 QLoRA": batch_and_steps(profile, train_rows)[1],
        "03 rank sweep, 03 topic adapter, 04 topic soft prompt": batch_and_steps(profile, slice_rows)[1],
        "06 PPO": profile.ppo_steps * ppo_updates_per_step,
        "06 PPO without KL penalty": profile.ppo_hacking_steps * ppo_updates_per_step,
        "07 reward model": profile.reward_max_steps if profile.reward_max_steps > 0 else
        ceil(ceil(len(preference_pairs("train")) / profile.batch_size) * profile.reward_epochs),
    }

    assert {run: count for run, count in steps.items() if count < MIN_OPTIMIZER_STEPS} == {}


def test_a_small_slice_at_a_large_batch_gets_a_smaller_batch_instead_of_one_step():
    from utils.profiles import get_profile
    from utils.training import batch_and_steps

    gpu = get_profile("gpu")  # batch 32, two epochs

    assert batch_and_steps(gpu, 32) == (8, 8)
    assert batch_and_steps(gpu, 12460) == (32, 780)
    assert batch_and_steps(get_profile("tiny"), 32) == (4, 4)  # a fixed max_steps stays


def loss_both_ways(profile, method):
    """(the model's own loss with every position's logits, answer_loss) on one padded batch."""
    from utils.apps.benchmark import model_for_method
    from utils.families import answer_loss
    from utils.models import load_tokenizer

    tokenizer = load_tokenizer(profile)
    train_set, _ = small_data(profile, tokenizer)
    model, _ = model_for_method(profile, method, tokenizer)
    batch = training_collator(tokenizer, model)([train_set[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss), float(answer_loss(model, batch))


@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning"])
def test_the_loss_from_the_answer_positions_alone_equals_the_models_own(tiny_profile, method):
    full_logits, answer_only = loss_both_ways(tiny_profile, method)
    assert answer_only == pytest.approx(full_logits, rel=1e-5)


@pytest.mark.parametrize("method, padding", [("full", "left"), ("lora", "left"), ("prompt_tuning", "right")])
def test_decoder_only_batches_pad_left_except_under_a_soft_prompt(method, padding):
    """PEFT ignores position ids under a soft prompt: left padding would move a row's text away from it."""
    from utils.apps.benchmark import model_for_method
    from utils.models import load_tokenizer
    from utils.profiles import get_profile

    profile = get_profile("tiny-causal")
    tokenizer = load_tokenizer(profile)
    model, _ = model_for_method(profile, method, tokenizer)
    train_set, _ = small_data(profile, tokenizer)
    short, long = sorted((train_set[i] for i in range(4)), key=lambda row: len(row["input_ids"]))[::3]

    batch = training_collator(tokenizer, model)([short, long])

    real = batch["attention_mask"][0].tolist()
    assert (real[-1], real[0]) == ((1, 0) if padding == "left" else (0, 1))
