"""QLoRA pieces: NF4 loading with bitsandbytes on this machine's device, and number formats."""

import logging

import bitsandbytes
import torch

from utils.apps.benchmark import weight_megabytes
from utils.models import count_parameters, load_model
from utils.quantization import (
    add_qlora,
    bitsandbytes_problem,
    format_sizes,
    linear_layers_kept_in_full_precision,
    load_4bit_model,
    nf4_config,
    nf4_round_trip_error,
    qlora_training_overrides,
)


def test_bitsandbytes_runs_4bit_on_this_cpu():
    assert bitsandbytes_problem(torch.device("cpu")) is None


def test_nf4_config_asks_for_nf4_double_quantization_and_the_compute_dtype():
    config = nf4_config(torch.bfloat16)

    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_format_sizes_halve_with_the_bits():
    sizes = format_sizes(1_000_000)

    assert sizes["float32"] == 2 * sizes["bfloat16"] == 4 * sizes["int8"] == 8 * sizes["nf4"]


def test_nf4_keeps_weights_close_but_not_exact():
    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))

    error = nf4_round_trip_error(weight)

    assert 0.0 < error < 0.2


def test_a_4bit_model_is_smaller_and_trains_only_lora(tiny_profile):
    full_precision = weight_megabytes(load_model(tiny_profile))

    model = load_4bit_model(tiny_profile)
    quantized = weight_megabytes(model)
    model = add_qlora(model, tiny_profile, rank=2)

    assert quantized < full_precision
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_a_4bit_model_counts_as_many_weights_as_the_full_precision_one(tiny_profile):
    assert count_parameters(load_4bit_model(tiny_profile))[1] == count_parameters(load_model(tiny_profile))[1]


def test_a_4bit_load_keeps_the_head_and_t5s_feed_forward_output_in_full_precision(tiny_profile):
    kept = linear_layers_kept_in_full_precision(load_4bit_model(tiny_profile))

    expected = {"lm_head", "wo"} if tiny_profile.is_encoder_decoder else {"lm_head"}
    assert set(kept) == expected
    assert "_keep_in_fp32_modules" in kept.get("wo", "_keep_in_fp32_modules")


def test_qlora_adapts_every_quantized_layer_as_in_the_qlora_paper(tiny_profile):
    model = add_qlora(load_4bit_model(tiny_profile), tiny_profile, rank=2)

    quantized = {name for name, module in model.named_modules() if isinstance(module, bitsandbytes.nn.Linear4bit)}
    adapted = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert quantized and quantized <= {f"{name}.base_layer" for name in adapted}  # T5 keeps `wo` unquantized


def test_an_evaluation_pass_leaves_qlora_training_as_it_was(tiny_profile):
    # On AVX512-BF16 CPUs bitsandbytes would repack the 4-bit weights for a bf16 inference kernel
    # here, and the training step after it would lose the gradients through the frozen layers.
    model = add_qlora(load_4bit_model(tiny_profile), tiny_profile, rank=2)
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))

    def training_step():
        model.train()
        model.zero_grad()
        torch.manual_seed(0)  # the same LoRA dropout in every step
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss_before, gradients_before = training_step()
    model.eval()
    with torch.no_grad():
        model(input_ids=tokens, labels=tokens)
    loss_after, gradients_after = training_step()

    assert loss_after == loss_before
    assert all(torch.equal(before, after) for before, after in zip(gradients_before, gradients_after))


def test_on_cpu_qlora_uses_plain_adamw_without_checkpointing(tiny_profile):
    assert qlora_training_overrides(tiny_profile) == {"optim": "adamw_torch", "activation_checkpointing": False}


def test_the_missing_hub_kernel_warning_of_bitsandbytes_is_dropped_and_its_other_warnings_kept(caplog):
    cpu_ops = logging.getLogger("bitsandbytes.backends.cpu.ops")

    with caplog.at_level(logging.WARNING, logger=cpu_ops.name):
        cpu_ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
        cpu_ops.warning("Some other problem.")

    assert [record.getMessage() for record in caplog.records] == ["Some other problem."]


def test_a_4bit_load_uses_the_bitsandbytes_config_it_is_given(tiny_profile):
    # Notebook 05 builds its BitsAndBytesConfig in sight and loads the model with it.
    model = load_4bit_model(tiny_profile, config=nf4_config(torch.float32, double_quantization=False))

    states = [m.weight.quant_state for m in model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert states and not any(state.nested for state in states)
    assert all(state.nested for state in (m.weight.quant_state for m in load_4bit_model(tiny_profile).modules()
                                          if isinstance(m, bitsandbytes.nn.Linear4bit)))


def test_training_memory_parts_count_4bit_frozen_weights_smaller_and_the_adapters_alike(tiny_profile):
    from utils.plumbing.measure import training_memory_parts

    def parts(model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        return training_memory_parts(model, optimizer)

    from utils.adapters import add_lora

    lora = parts(add_lora(load_model(tiny_profile), rank=2, targets="all-linear"))
    qlora = parts(add_qlora(load_4bit_model(tiny_profile), tiny_profile, rank=2))

    assert qlora["trainable_weights_mb"] == lora["trainable_weights_mb"] == qlora["gradients_mb"]
    assert qlora["frozen_weights_mb"] < lora["frozen_weights_mb"]
