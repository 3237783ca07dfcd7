"""GRPO: group advantages by hand, the loss against TRL's GRPOTrainer on the same batch, and runs that resume."""

from dataclasses import replace

import pytest
import torch

from utils.adapters import add_lora
from utils.data import prompts_for
from utils.grpo import (
    GRPOConfig,
    GRPOPolicy,
    group_advantages,
    grpo_config,
    grpo_loss,
    grpo_token_losses,
    k3_kl,
    settings_with_reasons,
    train_grpo,
)
from utils.models import load_model_and_tokenizer
from utils.ppo import Rollout
from utils.profiles import get_profile
from utils.prompts import encode
from utils.rewards import CombinedReward, ProfanityScorer
from utils.rl_data import load_detox

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_group_of_rewards_becomes_advantages_and_an_equal_group_gives_none():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])

    advantages, equal = group_advantages(rewards, group_size=4, epsilon=0.0)

    # group 1: mean 0.25, sample std sqrt((0.75^2 + 3 x 0.25^2) / 3) = 0.5
    assert advantages[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert advantages[4:].tolist() == [0.0] * 4 and equal.tolist() == [False] * 4 + [True] * 4


def test_the_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    logprobs = torch.log(torch.tensor([0.5, 0.5, 0.2]))
    ref = torch.log(torch.tensor([0.5, 0.25, 0.4]))

    kl = k3_kl(logprobs, ref)

    assert kl[0].item() == 0.0 and (kl[1:] > 0).all()
    assert kl[1].item() == pytest.approx(0.5 - torch.log(torch.tensor(0.5)).item() - 1)  # r = 0.25 / 0.5


def random_adapter(model, seed=0):
    """A LoRA adapter whose B matrices are not zero, so the policy differs from its reference."""
    model = add_lora(model, rank=4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def one_group(tokenizer, group_size=4):
    """One prompt and `group_size` completions of different lengths (right-padded), as GRPO samples a group."""
    query = encode(tokenizer, ["Summarize: the customer asks for a refund."], False, return_tensors="pt")
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 3, 6, 2][:group_size]
    ids = torch.randint(3, len(tokenizer), (group_size, max(lengths)), generator=generator)
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    return Rollout(query["input_ids"].repeat(group_size, 1), query["attention_mask"].repeat(group_size, 1), ids, mask)


def test_the_course_grpo_loss_is_trls_on_the_same_batch(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    model, tokenizer = load_model_and_tokenizer(get_profile("tiny-causal"))
    policy = GRPOPolicy(random_adapter(model))
    rollout = one_group(tokenizer)
    advantages, _ = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.0]), group_size=4)
    with torch.no_grad():
        current = policy.logprobs(rollout)
        ref_logprobs = policy.reference_logprobs(rollout)
    # the policy that sampled differed a little from the current one: ratios off 1, some clipped
    old_logprobs = (current + 0.3 * torch.randn(current.shape, generator=torch.Generator().manual_seed(2)))
    old_logprobs = old_logprobs * rollout.response_mask

    args = TRLConfig(output_dir=str(tmp_path), beta=0.1, epsilon=0.2, bf16=False,  # float32, as the course's test num_generations=4, per_device_train_batch_size=4,
                     max_completion_length=8, report_to=[], use_cpu=True)
    trainer = GRPOTrainer(model=policy.model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          args=args, train_dataset=Dataset.from_list([{"prompt": "hello"}] * 4),
                          processing_class=tokenizer)
    inputs = {"prompt_ids": rollout.query_ids, "prompt_mask": rollout.query_mask,
              "completion_ids": rollout.response_ids, "completion_mask": rollout.response_mask,
              "advantages": advantages, "old_per_token_logps": old_logprobs, "ref_per_token_logps": ref_logprobs,
              "num_items_in_batch": rollout.response_mask.sum()}
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, inputs)
        terms = grpo_token_losses(policy.logprobs(rollout), old_logprobs, ref_logprobs, advantages, 0.2, 0.1)
    ours = grpo_loss(terms["loss"], rollout.response_mask, rollout.response_mask.sum().item())

    assert abs(trl_loss.item()) > 1e-2  # neither the advantages nor the KL cancel out: the check can fail
    assert ((terms["ratio"] - 1).abs() > 0.2)[rollout.response_mask.bool()].any()  # the clip is in play
    torch.testing.assert_close(ours, trl_loss, atol=1e-5, rtol=1e-5)


def detox_inputs(tokenizer, profile, n=6):
    dialogues = [row["dialogue"] for row in load_detox("train")[:n]]
    return prompts_for(dialogues, tokenizer, profile), dialogues


CONFIG = GRPOConfig(steps=2, prompts_per_step=2, group_size=4, mini_batches=2, learning_rate=1e-2, max_new_tokens=8,
                    checkpoint_every=1)
REWARD = CombinedReward({"length in band": 1.0, "names the speakers": 1.0, "non-toxic": 1.0}, ProfanityScorer())


def fresh(profile):
    model, tokenizer = load_model_and_tokenizer(profile)
    return GRPOPolicy(add_lora(model, rank=4)), tokenizer


def test_grpo_logs_every_component_and_a_rerun_reuses_the_finished_run(tiny_profile, tmp_path, capsys):
    policy, tokenizer = fresh(tiny_profile)
    prompts, dialogues = detox_inputs(tokenizer, tiny_profile)

    result = train_grpo(policy, tokenizer, REWARD, prompts, dialogues, CONFIG, tmp_path / "grpo")

    first = result.history[0]
    assert [record["step"] for record in result.history] == [1, 2]
    assert {"length in band", "names the speakers", "non-toxic", "reward", "kl", "zero_variance_share", "loss"} <= set(first)
    assert len(first["responses"]) == CONFIG.prompts_per_step * CONFIG.group_size
    assert 0.0 < first["kl"] < 0.01  # the fresh adapter is its reference until its first update, one mini-batch in
    again, _ = fresh(tiny_profile)
    reused = train_grpo(again, tokenizer, REWARD, prompts, dialogues, CONFIG, tmp_path / "grpo")
    assert reused.reused and "Reusing the finished GRPO run" in capsys.readouterr().out
    assert reused.history == result.history
    for (name, trained), (_, loaded) in zip(policy.named_parameters(), again.named_parameters()):
        if "lora_" in name:
            torch.testing.assert_close(trained, loaded)


def test_an_interrupted_grpo_run_resumes_and_matches_a_run_never_interrupted(tiny_profile, tmp_path, capsys):
    policy, tokenizer = fresh(tiny_profile)
    prompts, dialogues = detox_inputs(tokenizer, tiny_profile)
    train_grpo(policy, tokenizer, REWARD, prompts, dialogues, CONFIG, tmp_path / "run")  # stopped after step 2 of 4
    policy, _ = fresh(tiny_profile)
    resumed = train_grpo(policy, tokenizer, REWARD, prompts, dialogues, replace(CONFIG, steps=4), tmp_path / "run")
    straight_policy, _ = fresh(tiny_profile)
    straight = train_grpo(straight_policy, tokenizer, REWARD, prompts, dialogues, replace(CONFIG, steps=4),
                          tmp_path / "straight")

    assert "Resuming from step 2" in capsys.readouterr().out and resumed.resumed_from == 2
    without_time = [[{k: v for k, v in r.items() if k != "seconds"} for r in run.history] for run in (resumed, straight)]
    assert without_time[0] == without_time[1]
    for (name, a), (_, b) in zip(policy.named_parameters(), straight_policy.named_parameters()):
        if "lora_" in name:
            torch.testing.assert_close(a, b)


def test_a_group_of_one_and_batches_that_do_not_split_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="equal mini-batches"):
        GRPOConfig(prompts_per_step=3, group_size=3, mini_batches=2)


@pytest.mark.parametrize("profile_name", ["tiny", "offline", "colab", "gpu"])
def test_every_profile_says_why_it_chose_each_grpo_setting_it_sets(profile_name):
    profile = replace(get_profile(profile_name), device="cpu")  # the settings, on a machine without a GPU
    rows = {row["setting"]: row for row in settings_with_reasons(grpo_config(profile), profile.grpo_reasons)}

    for setting in ("steps", "prompts_per_step", "group_size", "learning_rate", "beta", "temperature"):
        assert rows[setting]["why"] == profile.grpo_reasons[setting]
    assert set(profile.grpo_reasons) <= set(rows)  # every reason names a setting the table shows
    assert rows["learning_rate"]["value"] == profile.grpo_learning_rate
    assert rows["clip_range"]["why"] == GRPOConfig.__dataclass_fields__["clip_range"].metadata["why"]
