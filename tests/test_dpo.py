"""The DPO loss: by hand, against TRL's DPOTrainer on the same batch, and a few steps of it on both families."""

import math
from dataclasses import replace
from unittest.mock import patch

import pytest
import torch

from utils.adapters import add_lora
from utils.dpo import DPOConfig, PreferencePairs, dpo_loss, dpo_step, pair_tensors, sequence_logprobs, train_dpo
from utils.models import load_model_and_tokenizer
from utils.profiles import get_profile
from utils.prompts import encode

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [  # prompt, chosen, rejected
    ("Summarize: the customer asks for a refund.", " The customer asks for a refund.", " The idiot wants money."),
    ("Summarize: the train is late again.", " The train is late.", " Shut up about the train."),
]


def test_the_loss_of_one_pair_by_hand():
    loss, chosen_reward, rejected_reward = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5]), beta=0.5)

    # chosen: 0.5 x (-10 + 11) = 0.5; rejected: 0.5 x (-12 + 11.5) = -0.25; loss = -log sigmoid(0.75)
    assert chosen_reward.item() == pytest.approx(0.5) and rejected_reward.item() == pytest.approx(-0.25)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.75))))


def random_adapter(model, seed=0):
    """A LoRA adapter whose B matrices are not zero, so the policy differs from its reference."""
    model = add_lora(model, rank=4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def split_trl_batch(batch, pad_id):
    """TRL's rows (prompt + completion, right-padded) as the course's (query left-padded, response right-padded)."""
    queries, responses = [], []
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        start, end = int(completion.argmax()), int(attention.sum())
        queries.append(ids[:start])
        responses.append(ids[start:end])

    def padded(rows, left):
        width = max(map(len, rows))
        ids = [torch.cat([torch.full((width - len(r),), pad_id), r] if left else [r, torch.full((width - len(r),), pad_id)])
               for r in rows]
        masks = [torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))] if left
                           else [torch.ones(len(r)), torch.zeros(width - len(r))]).long() for r in rows]
        return torch.stack(ids), torch.stack(masks)

    return (*padded(queries, left=True), *padded(responses, left=False))


def test_the_course_dpo_loss_is_trls_on_the_same_batch(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_model_and_tokenizer(get_profile("tiny-causal"))
    model = random_adapter(model)
    pairs = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    args = DPOConfig(output_dir=str(tmp_path), beta=0.3, per_device_train_batch_size=2, report_to=[], use_cpu=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    trainer.model.delete_adapter("ref")  # TRL's reference is then the adapter switched off, as the course's
    batch = next(iter(trainer.get_train_dataloader()))  # rows: the chosen responses, then the rejected ones
    model.eval()

    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        tensors = split_trl_batch(batch, tokenizer.pad_token_id)
        logps = sequence_logprobs(model, False, *tensors)
        with model.disable_adapter():
            ref_logps = sequence_logprobs(model, False, *tensors)
    ours, chosen_rewards, rejected_rewards = dpo_loss(*logps.chunk(2), *ref_logps.chunk(2), beta=0.3)

    assert abs(trl_loss.item() - math.log(2)) > 1e-3  # the policy is not its reference: the check can fail
    torch.testing.assert_close(ours, trl_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("profile_name", ["tiny", "tiny-causal"])
def test_a_few_dpo_steps_raise_the_chosen_responses_above_the_rejected(profile_name):
    model, tokenizer = load_model_and_tokenizer(get_profile(profile_name))
    model = add_lora(model, rank=4)
    is_encoder_decoder = model.config.is_encoder_decoder
    tokenizer.padding_side = "right" if is_encoder_decoder else "left"
    query = encode(tokenizer, [p for p, _, _ in PAIRS] * 2, is_encoder_decoder, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    responses = tokenizer([c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS], add_special_tokens=False,
                          return_tensors="pt", padding=True)
    tensors = (query["input_ids"], query["attention_mask"], responses["input_ids"], responses["attention_mask"])
    start = model.config.decoder_start_token_id if is_encoder_decoder else None
    with torch.no_grad(), model.disable_adapter():
        ref_logps = sequence_logprobs(model, is_encoder_decoder, *tensors, start)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    margins = []
    for _ in range(6):
        logps = sequence_logprobs(model, is_encoder_decoder, *tensors, start)
        loss, chosen, rejected = dpo_loss(*logps.chunk(2), *ref_logps.chunk(2), beta=0.1)
        margins.append((chosen - rejected).mean().item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert margins[0] == pytest.approx(0.0, abs=1e-5)  # the adapter starts at zero: the policy is its reference
    assert margins[-1] > 0.05, margins


def detox_pairs(n=8):
    from utils.rl_data import load_detox

    rows = load_detox("train")[:n]
    return PreferencePairs([f"Summarize: {row['dialogue']}" for row in rows], [row["summary"] for row in rows],
                           [row["careless_summary"] for row in rows])


def test_train_dpo_raises_the_margin_and_a_rerun_reuses_the_finished_run(tiny_profile, tmp_path, capsys):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    model = add_lora(model, rank=4)
    config = DPOConfig(steps=4, batch_size=4, learning_rate=1e-2, max_response_tokens=24, checkpoint_every=2)

    result = train_dpo(model, tokenizer, detox_pairs(), config, tmp_path / "dpo")

    assert [record["step"] for record in result.history] == [1, 2, 3, 4]
    assert result.history[0]["margin"] == pytest.approx(0.0, abs=1e-5)  # the fresh adapter is its reference
    assert result.history[-1]["margin"] > result.history[0]["margin"]
    again, _ = load_model_and_tokenizer(tiny_profile)
    reused = train_dpo(add_lora(again, rank=4), tokenizer, detox_pairs(), config, tmp_path / "dpo")
    assert reused.reused and "Reusing the finished DPO run" in capsys.readouterr().out
    assert reused.history == result.history
    for (name, trained), (_, loaded) in zip(model.named_parameters(), reused.model.named_parameters()):
        if "lora_" in name:
            torch.testing.assert_close(trained, loaded)


def test_a_longer_dpo_rerun_resumes_and_matches_a_run_never_interrupted(tiny_profile, tmp_path, capsys):
    def fresh():
        model, tokenizer = load_model_and_tokenizer(tiny_profile)
        return add_lora(model, rank=4), tokenizer

    config = DPOConfig(steps=2, batch_size=4, learning_rate=1e-2, max_response_tokens=24, checkpoint_every=1)
    model, tokenizer = fresh()
    train_dpo(model, tokenizer, detox_pairs(), config, tmp_path / "run")
    model, tokenizer = fresh()
    resumed = train_dpo(model, tokenizer, detox_pairs(), replace(config, steps=4), tmp_path / "run")
    model, tokenizer = fresh()
    straight = train_dpo(model, tokenizer, detox_pairs(), replace(config, steps=4), tmp_path / "straight")

    assert "Resuming from step 2" in capsys.readouterr().out and resumed.resumed_from == 2
    without_time = [[{k: v for k, v in r.items() if k != "seconds"} for r in run.history] for run in (resumed, straight)]
    assert without_time[0] == without_time[1]


def test_a_pair_read_again_reuses_the_reference_log_probabilities_of_its_first_reading(tiny_profile):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    model = add_lora(model, rank=4)
    pairs = detox_pairs(3)
    config = DPOConfig(batch_size=2, learning_rate=1e-2, max_response_tokens=24)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    reference = {}

    dpo_step(model, tokenizer, optimizer, pairs, [0, 1], config, reference)
    first = {i: list(logps) for i, logps in reference.items()}
    with patch.object(type(model), "disable_adapter", side_effect=AssertionError("the reference ran again")):
        dpo_step(model, tokenizer, optimizer, pairs, [1, 0], config, reference)  # both known: no reference pass
    dpo_step(model, tokenizer, optimizer, pairs, [2, 0], config, reference)  # pair 2 is new

    assert set(first) == {0, 1} and set(reference) == {0, 1, 2}
    assert all(reference[i] == first[i] for i in first)  # kept from the first reading
    with torch.no_grad(), model.disable_adapter():  # the reference it kept is the adapter switched off
        is_encoder_decoder = model.config.is_encoder_decoder
        tensors = pair_tensors(tokenizer, pairs, [2], is_encoder_decoder, 24)
        start = model.config.decoder_start_token_id if is_encoder_decoder else None
        again = sequence_logprobs(model, is_encoder_decoder, *tensors, start)
    assert again.tolist() == pytest.approx(reference[2], abs=1e-4)


def test_pairs_without_one_chosen_and_one_rejected_response_per_prompt_are_refused():
    with pytest.raises(ValueError, match="one chosen and one rejected"):
        PreferencePairs(["a", "b"], ["x"], ["y", "z"])


def test_under_bf16_autocast_dpo_still_starts_at_its_reference_and_raises_the_margin(tiny_profile, tmp_path):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    model = add_lora(model, rank=4)
    config = DPOConfig(steps=4, batch_size=4, learning_rate=1e-2, max_response_tokens=24, checkpoint_every=4,
                       autocast_dtype="bfloat16")

    result = train_dpo(model, tokenizer, detox_pairs(), config, tmp_path / "dpo")

    assert result.history[0]["margin"] == 0.0  # a zero adapter adds exactly nothing, in bf16 too
    assert result.history[-1]["margin"] > 0.0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


# --- pairs built the way PPO learns: the summarizer's own samples, ranked by a toxicity scorer ---

def test_each_prompt_gives_its_least_toxic_sample_as_chosen_and_its_most_toxic_as_rejected():
    from utils.preference_pairs import rank_into_pairs

    samples = [["calm", "rude", "fine"], ["same", "same", "same"], ["ok", "okay", "nasty"]]
    toxicity = [[0.10, 0.90, 0.20], [0.30, 0.30, 0.30], [0.05, 0.06, 0.70]]

    ranked = rank_into_pairs(["p0", "p1", "p2"], samples, toxicity, min_gap=0.0)

    assert ranked.rows == [0, 2] and ranked.skipped == 1  # prompt 1's samples are a tie: no pair
    assert (ranked.pairs.prompts, ranked.pairs.chosen, ranked.pairs.rejected) == (["p0", "p2"], ["calm", "ok"],
                                                                                  ["rude", "nasty"])
    assert ranked.chosen_toxicity == [0.10, 0.05] and ranked.rejected_toxicity == [0.90, 0.70]


def test_samples_the_scorer_rates_within_the_minimum_gap_give_no_pair():
    from utils.preference_pairs import rank_into_pairs

    samples = [["a", "b"], ["c", "d"]]
    toxicity = [[0.10, 0.12], [0.10, 0.50]]

    assert rank_into_pairs(["p0", "p1"], samples, toxicity, min_gap=0.05).rows == [1]
    with pytest.raises(ValueError, match="no pairs"):
        rank_into_pairs(["p0", "p1"], samples, toxicity, min_gap=0.5)


def fake_toxicity(texts, prompts=None):
    """A stand-in scorer: a fixed number in [0, 1) per text, different for different texts."""
    import hashlib

    return [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) / 16**8 for t in texts]


def test_pairs_from_the_models_own_samples_come_from_those_samples_and_again_the_same(tiny_profile):
    from utils.detox import ppo_config, sample_summaries
    from utils.preference_pairs import sample_and_rank

    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    prompts = [p for p, _, _ in PAIRS]
    sampling, seeds = ppo_config(tiny_profile), [7, 8, 9]

    ranked = sample_and_rank(model, tokenizer, prompts, sampling, seeds, fake_toxicity)
    again = sample_and_rank(model, tokenizer, prompts, sampling, seeds, fake_toxicity)
    samples = sample_summaries(model, tokenizer, prompts, sampling, seeds)

    assert again.pairs == ranked.pairs  # seeded: a rerun builds the same pairs
    for pair, row in enumerate(ranked.rows):
        scores = fake_toxicity(samples[row])
        assert ranked.pairs.chosen[pair] == samples[row][scores.index(min(scores))]
        assert ranked.pairs.rejected[pair] == samples[row][scores.index(max(scores))]
    assert len(ranked.rows) + ranked.skipped == len(prompts)


# --- what notebook 08 shows and records ---

@pytest.mark.parametrize("profile_name", ["tiny", "offline", "colab", "gpu"])
def test_every_profile_says_why_it_chose_each_dpo_setting_it_sets(profile_name):
    from utils.detox import dpo_config
    from utils.dpo import dpo_settings

    profile = replace(get_profile(profile_name), device="cpu")  # the settings, on a machine without a GPU
    rows = {row["setting"]: row for row in dpo_settings(dpo_config(profile), profile.dpo_reasons)}

    for setting in ("steps", "batch_size", "learning_rate", "beta", "max_response_tokens"):
        assert rows[setting]["why"] == profile.dpo_reasons[setting]
    assert rows["steps"]["value"] == profile.dpo_steps
    assert profile.dpo_reasons["pair_samples"] and profile.dpo_pair_samples >= 2
    assert rows["max_grad_norm"]["why"] == DPOConfig.__dataclass_fields__["max_grad_norm"].metadata["why"]
    assert "autocast_dtype" not in rows and "checkpoint_every" not in rows  # how it computes, not what it learns


def test_the_comparison_shows_the_latest_record_of_each_labelled_run_in_the_labels_order():
    from utils.dpo import alignment_rows

    def record(method, variant, after, seconds):
        return {"method": method, **({"variant": variant} if variant else {}), "toxicity_before_mean": 0.2,
                "toxicity_after_mean": after, "toxicity_difference": after - 0.2, "ci_low": after - 0.25,
                "ci_high": after - 0.15, "rouge1_before": 0.40, "rouge1_after": 0.41, "seconds": seconds}

    records = [record("dpo", "", 0.05, 10), record("ppo", "", 0.15, 30), record("dpo", "on-policy pairs", 0.12, 20),
               record("ppo", "no KL penalty", 0.01, 5), record("dpo", "on-policy pairs", 0.10, 21)]
    labels = {("ppo", ""): "PPO", ("dpo", "on-policy pairs"): "DPO, sampled", ("dpo", ""): "DPO, written"}

    rows = alignment_rows(records, labels)

    assert list(rows) == ["PPO", "DPO, sampled", "DPO, written"]
    assert rows["DPO, sampled"]["toxicity after"] == 0.10 and rows["DPO, sampled"]["training seconds"] == 21
    assert rows["PPO"]["change"] == pytest.approx(-0.05) and rows["PPO"]["ROUGE-1 change"] == pytest.approx(0.01)
