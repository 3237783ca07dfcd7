"""PPO term by term: each formula against hand-computed numbers, then the policy and the training loop."""

import math
from dataclasses import replace

import pytest
import torch
from scripts.token_share_reward import TokenShareReward

from utils.adapters import add_lora
from utils.families import answer_logits_and_hidden
from utils.models import inference_copy, load_model_and_tokenizer
from utils.ppo import (
    PolicyWithValueHead,
    PPOConfig,
    prompt_indices,
    response_mask_until_eos,
    run_scaled_kl_horizon,
    sample_responses,
    score_rollout,
    settings_with_reasons,
    train_ppo,
)
from utils.ppo_terms import (
    AdaptiveKLController,
    FixedKLController,
    ScoreNormalizer,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    kl_penalized_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    per_token_kl,
)
from utils.prompts import encode, instruction

EPS = 0.2


pytestmark = pytest.mark.usefixtures("one_thread")


def tensor(*rows):
    """Rows of per-token numbers, shaped (batch, length) like every per-token tensor in PPO."""
    return torch.tensor(rows, dtype=torch.float32)


# --- the terms of the objective ------------------------------------------------------------


def test_logprobs_and_entropy_of_a_two_token_vocabulary():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities 1/4 and 3/4

    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert logprobs_from_logits(logits, torch.tensor([[0]])).item() == pytest.approx(math.log(0.25))
    expected_entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(expected_entropy)
    assert logprobs_from_logits(logits, torch.tensor([[1]]), mask=tensor([0])).item() == 0.0


def test_masked_mean_and_whiten_ignore_padding():
    values, mask = tensor([1.0, 2.0, 3.0, 100.0]), tensor([1, 1, 1, 0])

    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    # mean 2, variance (1 + 0 + 1) / 3
    expected = [-1 / math.sqrt(2 / 3), 0.0, 1 / math.sqrt(2 / 3), 0.0]
    assert masked_whiten(values, mask)[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_per_token_kl_is_the_logprob_difference_on_real_tokens():
    kl = per_token_kl(tensor([-1.0, -2.0, -0.5]), tensor([-1.5, -1.0, -0.5]), mask=tensor([1, 1, 0]))

    assert kl[0].tolist() == pytest.approx([0.5, -1.0, 0.0])


def test_kl_penalty_on_every_token_and_the_score_on_the_last_real_one():
    scores = torch.tensor([2.0, -1.0])
    logprobs = tensor([-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0])
    ref_logprobs = tensor([-1.5, -1.0, -0.5], [-1.0, -2.0, -3.0])
    mask = tensor([1, 1, 0], [1, 1, 1])  # the first response has one padding token

    rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)

    # KL per token: [0.5, -1.0, pad] and [0, 1, 2]; reward = -0.1 * KL, plus the score at the end.
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.1 + 2.0, 0.0])
    assert rewards[1].tolist() == pytest.approx([0.0, -0.1, -0.2 - 1.0])


def test_without_kl_penalty_the_reward_is_the_score_alone():
    config = PPOConfig(init_kl_coef=0.0, adaptive_kl=False)
    controller = config.kl_controller()
    controller.update(current_kl=50.0, n_steps=16)

    rewards = kl_penalized_rewards(torch.tensor([3.0]), tensor([-1.0, -9.0]), tensor([-5.0, -1.0]),
                                   tensor([1, 1]), controller.value)

    assert isinstance(controller, FixedKLController) and controller.value == 0.0
    assert rewards.tolist() == [[0.0, 3.0]]


def test_gae_on_three_tokens():
    rewards, values, mask = tensor([0.0, 0.0, 1.0]), tensor([0.5, 0.2, 0.4]), tensor([1, 1, 1])

    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)

    # Backwards: delta_2 = 1 - 0.4 = 0.6;             A_2 = 0.6
    #            delta_1 = 0.9 * 0.4 - 0.2 = 0.16;    A_1 = 0.16 + 0.72 * 0.6 = 0.592
    #            delta_0 = 0.9 * 0.2 - 0.5 = -0.32;   A_0 = -0.32 + 0.72 * 0.592 = 0.10624
    assert advantages[0].tolist() == pytest.approx([0.10624, 0.592, 0.6])
    assert returns[0].tolist() == pytest.approx([0.60624, 0.792, 1.0])


def test_gae_ignores_what_the_padding_holds():
    # The third position is padding: its reward and value must not reach the real tokens.
    rewards, values, mask = tensor([0.0, 1.0, 99.0]), tensor([0.5, 0.4, 7.0]), tensor([1, 1, 0])

    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)

    # delta_1 = 1 + 0 - 0.4 = 0.6; delta_0 = 0.9 * 0.4 - 0.5 = -0.14; A_0 = -0.14 + 0.72 * 0.6 = 0.292
    assert advantages[0].tolist() == pytest.approx([0.292, 0.6, 0.0])
    assert returns[0].tolist() == pytest.approx([0.792, 1.0, 0.0])


# advantage, ratio, loss, clipped: with eps = 0.2 the ratio is clipped to [0.8, 1.2].
POLICY_CASES = [
    (2.0, 0.5, -1.0, False),  # good token made rarer: -A*r = -1.0 > -A*0.8 = -1.6, keep pushing it up
    (2.0, 1.0, -2.0, False),
    (2.0, 1.5, -2.4, True),  # good token already 1.5x likelier: loss stops at -A*1.2, no more push
    (-2.0, 0.5, 1.6, True),  # bad token already half as likely: loss stops at -A*0.8, no more push
    (-2.0, 1.0, 2.0, False),
    (-2.0, 1.5, 3.0, False),  # bad token made likelier: -A*r = 3.0 > 2.4, keep pushing it down
]


@pytest.mark.parametrize("advantage, ratio, expected_loss, clipped", POLICY_CASES)
def test_clipped_policy_loss_in_each_of_the_six_cases(advantage, ratio, expected_loss, clipped):
    logprobs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old_logprobs, advantages, mask = tensor([0.0]), tensor([advantage]), tensor([1])

    loss, clip_fraction = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, EPS)
    loss.backward()

    assert loss.item() == pytest.approx(expected_loss)
    assert clip_fraction.item() == (1.0 if clipped else 0.0)
    # d(-A * r)/d logprob = -A * r where the unclipped term counts; nothing where the clip holds.
    expected_gradient = 0.0 if clipped else -advantage * ratio
    assert logprobs.grad.item() == pytest.approx(expected_gradient)


def test_clipped_policy_loss_averages_over_real_tokens_only():
    advantages = tensor([a for a, _, _, _ in POLICY_CASES] + [5.0])
    logprobs = torch.log(tensor([r for _, r, _, _ in POLICY_CASES] + [9.0]))
    mask = tensor([1, 1, 1, 1, 1, 1, 0])

    loss, clip_fraction = clipped_policy_loss(logprobs, torch.zeros_like(logprobs), advantages, mask, EPS)

    assert loss.item() == pytest.approx(sum(c[2] for c in POLICY_CASES) / 6)
    assert clip_fraction.item() == pytest.approx(2 / 6)


# value, old value, return, loss, clipped: the value may move at most 0.2 from its old value.
VALUE_CASES = [
    (1.0, 0.0, 1.0, 0.5 * 0.64, True),  # on target but moved by 1.0: the clipped value 0.2 is 0.8 off
    (0.1, 0.0, 1.0, 0.5 * 0.81, False),  # within the clip range: both errors are 0.9^2
    (-1.0, 0.0, 1.0, 0.5 * 4.0, False),  # moved away from the target: the larger, unclipped error counts
    (0.5, 0.0, -1.0, 0.5 * 2.25, False),
]


@pytest.mark.parametrize("value, old_value, target, expected_loss, clipped", VALUE_CASES)
def test_clipped_value_loss(value, old_value, target, expected_loss, clipped):
    loss, clip_fraction = clipped_value_loss(tensor([value]), tensor([old_value]), tensor([target]), tensor([1]), EPS)

    assert loss.item() == pytest.approx(expected_loss)
    assert clip_fraction.item() == (1.0 if clipped else 0.0)


def test_adaptive_kl_coefficient_rises_above_the_target_and_falls_below():
    above = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    below = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    slightly_above = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)

    above.update(current_kl=12.0, n_steps=100)  # error 1.0, clipped to 0.2
    below.update(current_kl=3.0, n_steps=100)  # error -0.5, clipped to -0.2
    slightly_above.update(current_kl=6.6, n_steps=100)  # error 0.1

    assert above.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10000))
    assert below.value == pytest.approx(0.2 * (1 - 0.2 * 100 / 10000))
    assert slightly_above.value == pytest.approx(0.2 * (1 + 0.1 * 100 / 10000))


def test_scores_are_normalised_by_the_running_mean_and_std_of_all_scores_so_far():
    batches = [torch.tensor([-9.0, 5.0, 7.5, 8.0]), torch.tensor([2.0, 8.5]), torch.tensor([-4.0, 6.0, 9.0])]
    normalizer = ScoreNormalizer()

    for seen, batch in enumerate(batches, start=1):
        normalizer.update(batch)
        everything = torch.cat(batches[:seen]).double()
        assert normalizer.mean == pytest.approx(everything.mean().item())
        assert normalizer.std == pytest.approx(everything.std().item())  # the sample std (n - 1)

    all_scores = torch.cat(batches)
    normalised = normalizer.normalize(all_scores)
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normalised.std().item() == pytest.approx(1.0, abs=1e-6)
    resumed = ScoreNormalizer()
    resumed.load_state_dict(normalizer.state_dict())
    torch.testing.assert_close(resumed.normalize(all_scores), normalised)


def test_the_kl_horizon_scales_with_the_run_so_beta_can_move_within_it():
    for steps, batch_size in [(20, 8), (20, 16), (2, 4)]:
        horizon = run_scaled_kl_horizon(steps, batch_size)
        controller = AdaptiveKLController(init_kl_coef=0.2, target=3.0, horizon=horizon)
        for _ in range(steps):
            controller.update(current_kl=0.3, n_steps=batch_size)  # far below the target: beta falls all run
        assert 0.2 * 0.3 < controller.value < 0.2 * 0.9, (steps, batch_size, controller.value)

    tiny_steps = AdaptiveKLController(init_kl_coef=0.2, target=3.0, horizon=run_scaled_kl_horizon(1, 4))
    tiny_steps.update(current_kl=30.0, n_steps=4)
    assert tiny_steps.value == pytest.approx(0.2 * 1.2)  # at most 20% a step, however short the run


def test_every_ppo_setting_says_why_it_has_its_value():
    rows = settings_with_reasons(PPOConfig(steps=3))

    assert [row["setting"] for row in rows][:2] == ["steps", "batch_size"] and rows[0]["value"] == 3
    assert all(len(row["why"]) > 15 for row in rows), [row["setting"] for row in rows if len(row["why"]) <= 15]
    assert "TRL's default" not in rows[4]["why"]  # the reason of the course's value, not a library's


def test_reasons_given_for_chosen_values_replace_the_courses():
    rows = settings_with_reasons(PPOConfig(learning_rate=3e-4), {"learning_rate": "a reason"})
    rows = {row["setting"]: row["why"] for row in rows}

    assert rows["learning_rate"] == "a reason" and "clip" in rows["clip_range"]


def test_the_response_ends_with_its_first_end_of_sequence_token():
    eos, pad = 1, 0
    responses = torch.tensor([[5, eos, pad, pad], [5, 6, 7, 8], [eos, pad, pad, pad]])

    assert response_mask_until_eos(responses, [eos]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    # When padding and end-of-sequence are one token (many decoder-only tokenizers), only the first counts.
    assert response_mask_until_eos(torch.tensor([[5, 2, 2, 2]]), [2]).tolist() == [[1, 1, 0, 0]]


def test_prompts_come_in_a_seeded_order_and_every_prompt_once_per_pass():
    first_pass = prompt_indices(n_prompts=6, batch_size=3, step=0, seed=1) + prompt_indices(6, 3, 1, 1)
    second_pass = prompt_indices(6, 3, 2, 1) + prompt_indices(6, 3, 3, 1)

    assert sorted(first_pass) == sorted(second_pass) == list(range(6))
    assert first_pass != second_pass
    assert prompt_indices(6, 3, 0, 1) == prompt_indices(6, 3, 0, 1)
    assert prompt_indices(6, 3, 0, 2) != prompt_indices(6, 3, 0, 1)


# --- the policy and its reference -----------------------------------------------------------

DIALOGUES = [
    "#Person1#: Hi.",
    "#Person1#: Where is the train station, please?",
    "#Person1#: I'd like a coffee.",
    "#Person2#: Sure, here you are.",
    "#Person1#: How much is it?\n#Person2#: Ten dollars.",
    "#Person1#: Good morning!",
]
PROMPTS = [instruction(d) for d in DIALOGUES]
SMALL = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, max_new_tokens=5, learning_rate=1e-2, checkpoint_every=1)


def make_policy(profile, weight_scale: float = 1.0):
    """A fresh tiny model with a rank-4 LoRA adapter and a value head; weights scaled by `weight_scale`."""
    model, tokenizer = load_model_and_tokenizer(profile)
    if weight_scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.mul_(weight_scale)
    torch.manual_seed(0)
    return PolicyWithValueHead(add_lora(model, rank=4)), tokenizer


def test_logits_values_and_reference_logprobs_have_one_entry_per_response_token(tiny_profile):
    policy, tokenizer = make_policy(tiny_profile)
    rollout = sample_responses(policy, tokenizer, PROMPTS[:3], SMALL)

    logits, values = policy(*rollout.tensors())
    reference = policy.reference_logprobs(*rollout.tensors())

    batch, length = rollout.response_ids.shape
    assert batch == 3 and 1 <= length <= SMALL.max_new_tokens
    assert logits.shape == (batch, length, len(tokenizer))
    assert values.shape == reference.shape == (batch, length)
    assert (values[rollout.response_mask == 0] == 0).all() and (reference[rollout.response_mask == 0] == 0).all()


def test_the_logits_of_a_response_are_those_it_was_sampled_from(tiny_profile):
    """Position t of the forward pass predicts response token t, exactly as during generation."""
    policy, tokenizer = make_policy(tiny_profile, weight_scale=3.0)
    tokenizer.padding_side = "right" if policy.is_encoder_decoder else "left"
    query = encode(tokenizer, PROMPTS[:3], policy.is_encoder_decoder, return_tensors="pt", padding=True)
    assert len(set(query["attention_mask"].sum(1).tolist())) == 3  # prompts of different lengths: padding matters

    generated = policy.model.generate(
        **query, do_sample=True, top_k=0, max_new_tokens=5, pad_token_id=tokenizer.pad_token_id,
        output_logits=True, return_dict_in_generate=True,
    )
    sampled_from = torch.stack(generated.logits, dim=1)
    start = 1 if policy.is_encoder_decoder else query["input_ids"].shape[1]
    response = generated.sequences[:, start:]
    logits, _ = policy(query["input_ids"], query["attention_mask"], response, torch.ones_like(response))

    torch.testing.assert_close(logits, sampled_from, atol=1e-4, rtol=1e-4)


def test_a_mini_batch_of_short_prompts_reads_less_padding_and_gets_the_same_logits(tiny_profile):
    policy, tokenizer = make_policy(tiny_profile, weight_scale=3.0)
    long_first = [DIALOGUES[0] * 3, *DIALOGUES[1:3]]
    rollout = sample_responses(policy, tokenizer, [instruction(d) for d in long_first], SMALL)

    short_ones = rollout.select(torch.tensor([1, 2]))

    assert short_ones.query_ids.shape[1] == rollout.query_mask[1:].sum(dim=1).max() < rollout.query_ids.shape[1]
    assert short_ones.response_ids.shape == rollout.response_ids[1:].shape
    with torch.no_grad():
        whole_batch, _ = policy(*rollout.tensors())
        mini_batch, _ = policy(*short_ones.tensors())
    torch.testing.assert_close(mini_batch, whole_batch[1:], atol=1e-4, rtol=1e-4)


def test_reference_is_the_base_model_and_equals_the_policy_until_it_trains(tiny_profile, tmp_path):
    policy, tokenizer = make_policy(tiny_profile)
    base_model, _ = load_model_and_tokenizer(tiny_profile)  # an untouched copy, for comparison only
    rollout = sample_responses(policy, tokenizer, PROMPTS[:4], SMALL)
    mask = rollout.response_mask

    def policy_logprobs():
        with torch.no_grad():
            logits, _ = policy(*rollout.tensors())
        return logprobs_from_logits(logits, rollout.response_ids, mask)

    with torch.no_grad():
        base_logits, _ = answer_logits_and_hidden(base_model, policy.is_encoder_decoder, *rollout.tensors(),
                                                    policy.decoder_start_token_id)
    base_logprobs = logprobs_from_logits(base_logits, rollout.response_ids, mask)

    # LoRA's B matrix starts at zero: the adapter changes nothing yet.
    torch.testing.assert_close(policy.reference_logprobs(*rollout.tensors()), policy_logprobs())
    train_ppo(policy, tokenizer, TokenShareReward("e").reward, PROMPTS, replace(SMALL, steps=1), tmp_path / "run")

    assert (policy_logprobs() - policy.reference_logprobs(*rollout.tensors())).abs().max() > 1e-3
    torch.testing.assert_close(policy.reference_logprobs(*rollout.tensors()), base_logprobs, atol=1e-5, rtol=1e-5)


def test_under_bf16_autocast_the_logprobs_move_by_rounding_only_and_the_weights_stay_float32(tiny_profile, tmp_path):
    policy, tokenizer = make_policy(tiny_profile)
    rollout = sample_responses(policy, tokenizer, PROMPTS[:4], SMALL)
    bf16 = replace(SMALL, autocast_dtype="bfloat16")

    fp32_terms, bf16_terms = score_rollout(policy, rollout, SMALL), score_rollout(policy, rollout, bf16)

    assert [t.dtype for t in bf16_terms] == [torch.float32] * 3  # log-probabilities and values come back float32
    for exact, rounded in zip(fp32_terms[:2], bf16_terms[:2]):  # the policy's and the reference's log-probabilities
        assert not torch.equal(exact, rounded)  # autocast did compute in bf16
        torch.testing.assert_close(rounded, exact, atol=0.05, rtol=0.01)
    result = train_ppo(policy, tokenizer, TokenShareReward("e").reward, PROMPTS, bf16, tmp_path / "run")
    assert all(math.isfinite(record["policy_loss"]) for record in result.history)
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}



def test_under_bf16_autocast_a_merged_bf16_copy_samples_and_the_policy_is_left_as_it_was(tiny_profile):
    policy, tokenizer = make_policy(tiny_profile)
    policy.eval()  # as train_ppo samples: no dropout
    with torch.no_grad():  # an adapter that changes the outputs, as after some PPO steps
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    bf16 = replace(SMALL, autocast_dtype="bfloat16")
    rollout = sample_responses(policy, tokenizer, PROMPTS[:4], SMALL)
    before = {name: parameter.clone() for name, parameter in policy.named_parameters()}

    sampler = inference_copy(policy.model, bf16.autocast_dtype)
    with policy.model.disable_adapter():
        switched_off = inference_copy(policy.model, bf16.autocast_dtype)

    assert inference_copy(policy.model, None) is policy.model  # float32 samples from the policy itself
    assert {p.dtype for p in sampler.parameters()} == {torch.bfloat16}
    assert not any("lora" in name for name, _ in sampler.named_parameters())  # the adapter is merged in
    assert all(torch.equal(before[name], p) for name, p in policy.named_parameters())
    assert {p.dtype for p in policy.parameters()} == {torch.float32}

    def logprobs(model):
        with torch.no_grad():
            logits, _ = answer_logits_and_hidden(model, policy.is_encoder_decoder, *rollout.tensors(),
                                                 policy.decoder_start_token_id)
        return logprobs_from_logits(logits.float(), rollout.response_ids, rollout.response_mask)

    exact = logprobs(policy.model)
    with policy.model.disable_adapter():
        without_adapter = logprobs(policy.model)
    rounding = (logprobs(sampler) - exact).abs().mean()
    assert rounding < 0.1 * (without_adapter - exact).abs().mean()  # the copy is the policy, not the reference
    # A copy made with the adapter switched off leaves it out: it is the reference, not the policy.
    assert (logprobs(switched_off) - without_adapter).abs().mean() < 0.1 * (without_adapter - exact).abs().mean()
    bf16_rollout = sample_responses(policy, tokenizer, PROMPTS[:4], bf16)
    assert bf16_rollout.response_ids.shape[0] == 4 and bf16_rollout.response_mask.sum() > 0

# --- training -----------------------------------------------------------------------------------

# A tiny random model (weights of std 0.02) hardly reacts to a rank-4 adapter and samples almost
# uniformly from its 1024 tokens. Larger weights, and for the Llama a lower sampling temperature,
# give a first policy that writes the target token now and then, and an adapter able to steer it.
STEERABLE = {
    "tiny": dict(weight_scale=2.0, temperature=1.0, token="2"),
    "tiny-causal": dict(weight_scale=4.0, temperature=0.3, token=":"),
}


def test_ppo_raises_the_reward_while_the_kl_stays_bounded(tiny_profile, tmp_path):
    setting = STEERABLE[tiny_profile.name]
    policy, tokenizer = make_policy(tiny_profile, setting["weight_scale"])
    reward = TokenShareReward(setting["token"])  # share of the text that is this token
    config = PPOConfig(steps=30, batch_size=8, mini_batch_size=4, ppo_epochs=2, learning_rate=5e-3, max_new_tokens=6,
                       temperature=setting["temperature"], init_kl_coef=0.05, adaptive_kl=False, checkpoint_every=30)

    result = train_ppo(policy, tokenizer, reward.reward, PROMPTS, config, tmp_path / "run")

    rewards = [record["reward_mean"] for record in result.history]
    first, last = rewards[0], sum(rewards[-5:]) / 5  # the first policy's reward, the last five steps'
    assert first < 0.4 and last > first + 0.3, rewards
    assert max(record["kl"] for record in result.history) < 20.0
    assert set(result.history[0]) == {
        "step", "reward_mean", "reward_std", "score_used_mean", "kl", "kl_coef", "clip_fraction", "value_clip_fraction",
        "entropy", "policy_loss", "value_loss", "response_length", "responses", "seconds",
    }
    assert len(result.history[0]["responses"]) == config.batch_size
    assert all(isinstance(text, str) for text in result.history[0]["responses"])


class CountingReward:
    """TokenShareReward("e") that counts the batches it scored: a resumed run scores only the steps left."""

    name = "counting-e"

    def __init__(self):
        self.batches = 0

    def __call__(self, texts):
        self.batches += 1
        return TokenShareReward("e").reward(texts)


def without_timing(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def adapter_weights(policy):
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


def test_a_longer_rerun_resumes_and_matches_a_run_never_interrupted(tiny_profile, tmp_path, capsys):
    reward = CountingReward()
    policy, tokenizer = make_policy(tiny_profile)
    first = train_ppo(policy, tokenizer, reward, PROMPTS, replace(SMALL, steps=2), tmp_path / "run")
    assert reward.batches == 2 and (tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors").exists()

    policy, tokenizer = make_policy(tiny_profile)  # a new process: fresh model, same folder, more steps
    resumed = train_ppo(policy, tokenizer, reward, PROMPTS, replace(SMALL, steps=4), tmp_path / "run")

    assert "Resuming from step 2" in capsys.readouterr().out
    assert reward.batches == 4 and resumed.resumed_from == 2 and not resumed.reused
    assert [record["step"] for record in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    straight_policy, tokenizer = make_policy(tiny_profile)
    straight = train_ppo(straight_policy, tokenizer, CountingReward(), PROMPTS, replace(SMALL, steps=4),
                         tmp_path / "straight")
    assert without_timing(resumed.history) == without_timing(straight.history)


def test_rerunning_a_finished_run_trains_nothing_and_loads_its_weights(tiny_profile, tmp_path, capsys):
    reward = CountingReward()
    policy, tokenizer = make_policy(tiny_profile)
    finished = train_ppo(policy, tokenizer, reward, PROMPTS, SMALL, tmp_path / "run")

    again_policy, tokenizer = make_policy(tiny_profile)
    again = train_ppo(again_policy, tokenizer, reward, PROMPTS, SMALL, tmp_path / "run")

    assert "Reusing the finished PPO run" in capsys.readouterr().out
    assert again.reused and reward.batches == SMALL.steps
    assert again.history == finished.history
    trained, loaded = adapter_weights(policy), adapter_weights(again_policy)
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[k], loaded[k]) for k in trained)


def test_a_finished_run_of_other_settings_is_kept_aside_and_training_starts_afresh(tiny_profile, tmp_path, capsys):
    reward = CountingReward()
    policy, tokenizer = make_policy(tiny_profile)
    train_ppo(policy, tokenizer, reward, PROMPTS, SMALL, tmp_path / "run")

    policy, tokenizer = make_policy(tiny_profile)
    other = train_ppo(policy, tokenizer, reward, PROMPTS, replace(SMALL, learning_rate=1e-3), tmp_path / "run")

    assert "holds a finished PPO run of other settings: kept it as" in capsys.readouterr().out
    assert len(list(tmp_path.glob("run.kept-*"))) == 1
    assert not other.reused and other.resumed_from == 0 and reward.batches == 2 * SMALL.steps


def test_config_rejects_a_batch_that_mini_batches_do_not_divide():
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        PPOConfig(batch_size=10, mini_batch_size=4)


class PromptEchoReward:
    """Remembers the (text, prompt) pairs it scored; every text gets reward 0."""

    name = "prompt-echo"

    def __init__(self):
        self.seen = []

    def __call__(self, texts, prompts=None):
        self.seen.append(list(zip(texts, prompts or [None] * len(texts))))
        return [0.0] * len(texts)


def test_reward_prompts_reach_the_reward_function_beside_their_responses(tiny_profile, tmp_path):
    """The reward sees each response with the reward prompt of the very prompt it answered."""
    policy, tokenizer = make_policy(tiny_profile)
    reward = PromptEchoReward()
    labels = [f"dialogue {i}" for i in range(len(PROMPTS))]

    result = train_ppo(policy, tokenizer, reward, PROMPTS, SMALL, tmp_path / "run", reward_prompts=labels)

    for step, seen in enumerate(reward.seen):
        expected = [labels[i] for i in prompt_indices(len(PROMPTS), SMALL.batch_size, step, SMALL.seed)]
        assert [prompt for _, prompt in seen] == expected
        assert [text for text, _ in seen] == result.history[step]["responses"]


def test_without_reward_prompts_the_reward_function_gets_the_texts_alone(tiny_profile, tmp_path):
    policy, tokenizer = make_policy(tiny_profile)
    reward = PromptEchoReward()

    train_ppo(policy, tokenizer, reward, PROMPTS, replace(SMALL, steps=1), tmp_path / "run")

    assert all(prompt is None for _, prompt in reward.seen[0])


def test_reward_prompts_must_match_the_prompts_one_to_one(tiny_profile, tmp_path):
    policy, tokenizer = make_policy(tiny_profile)

    with pytest.raises(ValueError, match="one per prompt"):
        train_ppo(policy, tokenizer, PromptEchoReward(), PROMPTS, SMALL, tmp_path / "run", reward_prompts=["only one"])
