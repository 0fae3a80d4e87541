"""Training stacks and their knobs: names, refusals, JSON, and what each knob changes in the analytic model.

Each knob's effect is checked against arithmetic derived from the code it models (the comment says
which); the analytic-against-trace calibration of every knob is in tests/planner/calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import peftplan
from peftplan.cli import main
from peftplan.errors import BadInputError
from peftplan.planner.stacks import KNOB_NAMES, STACK_NAMES, STACKS, resolve_knobs

LLAMA = "meta-llama/Llama-3.1-8B"
GIB = 1 << 30


def _memory(**kwargs: object) -> peftplan.planner.context.MemoryBreakdown:  # type: ignore[name-defined]
    kwargs.setdefault("fit_search", False)
    return peftplan.plan(LLAMA, **kwargs).methods[0].memory  # type: ignore[arg-type]


def test_the_stack_names_are_the_contract() -> None:
    # Other tools depend on exactly these names (issue 11).
    assert STACK_NAMES == ("hf", "trl", "unsloth", "axolotl", "llama-factory", "torchtune", "litgpt")


def test_hf_is_the_default_and_prices_as_before() -> None:
    default = peftplan.plan(LLAMA, methods="lora", fit_search=False).to_dict()
    explicit = peftplan.plan(LLAMA, methods="lora", stack="hf", fit_search=False).to_dict()
    assert default["training"]["stack"] == "hf"
    assert default["methods"][0]["memory"] == explicit["methods"][0]["memory"]


def test_json_shows_the_stack_and_every_knob(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "-m", LLAMA, "--vram", "24", "--method", "qlora", "--stack", "unsloth",
                 "--format", "json", "--no-fit-search"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    training = data["training"]
    assert training["stack"] == "unsloth"
    for knob in set(KNOB_NAMES) - {"checkpointing"}:
        assert training[knob] == getattr(STACKS["unsloth"].knobs, knob), knob
    assert training["checkpointing"] == STACKS["unsloth"].knobs.checkpointing


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--stack", "unslth"], "Did you mean: unsloth"),
        (["--loss", "chunkd"], "Did you mean: chunked"),
        (["--kbit-prep", "peftt"], "Did you mean: peft"),
        (["--checkpointing", "ofload"], "Did you mean: offload"),
        (["--precision", "pur"], "Did you mean: pure"),
        (["--loss-chunks", "0"], "integer >= 1"),
        (["--stack", "torchtune", "--method", "prefix"], "cannot train 'prefix'"),
        (["--stack", "litgpt", "--loss", "fused"], "has no 'fused' loss"),
        (["--cpu-offload"], "--cpu-offload needs --shard"),
        (["--shard", "zero4"], "Did you mean"),
    ],
)
def test_bad_stack_input_is_one_line_and_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "-m", LLAMA, "--vram", "24", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1


def test_a_knob_overrides_its_stack() -> None:
    assert resolve_knobs("torchtune", loss="full").loss == "full"
    assert resolve_knobs("torchtune").loss == "chunked"
    with pytest.raises(BadInputError):
        resolve_knobs("hf", nonsense=True)


def test_methods_a_stack_cannot_train_are_skipped_with_the_reason() -> None:
    plan = peftplan.plan(LLAMA, vram=80, stack="torchtune", fit_search=False)
    skipped = {s["method"]: s["reason"] for s in plan.skipped}
    assert "prefix" in skipped and "cannot train" in skipped["prefix"]
    assert "lora" in {m.method for m in plan.methods}


def test_chunked_loss_keeps_one_chunk_of_logit_gradients() -> None:
    # torchtune 0.6's CEWithChunkedOutputLoss: every chunk's fp32 log-softmax is saved (4 bytes per
    # token and vocabulary entry); at the end of the loss the bf16 chunk logits (2) and the last
    # chunk's fp32 copy (4 / 8) exist too; the recipe deletes the logits before backward, which holds
    # one chunk's gradients. transformers' loss holds 12 at its backward.
    seq, vocab = 4096, 128256
    full = _memory(methods="lora", seq_len=seq, stack="torchtune", loss="full", checkpointing="recompute")
    chunked = _memory(methods="lora", seq_len=seq, stack="torchtune", loss="chunked", loss_chunks=8,
                      checkpointing="recompute")
    assert full.logits == 3 * 4 * seq * vocab
    assert chunked.logits + chunked.activations >= (4 + 2) * seq * vocab + 4 * seq * vocab // 8
    assert chunked.peak_allocated < full.peak_allocated - 5 * seq * vocab


def test_fused_loss_holds_no_vocabulary_sized_tensor() -> None:
    seq, vocab, hidden = 8192, 128256, 4096
    fused = _memory(methods="lora", seq_len=seq, loss="fused")
    assert fused.logits < 16 * seq * hidden  # hidden-sized tensors and one block of logits only
    assert fused.logits < seq * vocab


def test_kbit_prep_none_leaves_unquantized_parameters_in_bf16() -> None:
    # peft's prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32; without it
    # they stay bf16: 2 bytes less per embedding, head and norm parameter.
    plan = peftplan.plan(LLAMA, methods="qlora", fit_search=False)
    spec = plan.spec
    packed = sum(lin.in_features * lin.out_features for lin in spec.linears if lin.role != "output")
    rest = spec.total_params - packed
    peft_prep = plan.methods[0].memory.weights
    none_prep = _memory(methods="qlora", kbit_prep="none").weights
    assert peft_prep - none_prep == 2 * rest


def test_torchtune_qlora_stores_like_no_prep_and_litgpt_quantizes_the_head() -> None:
    # torchtune: every decoder Linear is NF4 (LoRALinear's to_nf4 or FrozenNF4Linear), embeddings and
    # output stay bf16; litgpt's bitsandbytes plugin replaces every nn.Linear, lm_head included.
    none_prep = _memory(methods="qlora", kbit_prep="none")
    torchtune = _memory(methods="qlora", kbit_prep="torchtune")
    litgpt = _memory(methods="qlora", kbit_prep="all-linear")
    assert torchtune.weights == none_prep.weights
    head = 128256 * 4096
    assert none_prep.weights - litgpt.weights == 2 * head - head // 2


def test_adapters_in_the_training_dtype_take_half() -> None:
    fp32 = _memory(methods="lora", adapter_dtype="fp32")
    bf16 = _memory(methods="lora", adapter_dtype="dtype", precision="pure")
    assert bf16.adapter * 2 == fp32.adapter
    assert bf16.optimizer * 2 == fp32.optimizer  # AdamW's states follow the parameter dtype


def test_optimizer_in_backward_never_holds_every_gradient() -> None:
    # Full fine-tuning of 8B in bf16: the gradients alone are 16 GB; stepping inside backward frees
    # each one once it is used, so at most one tensor's gradient (the 1 GB embedding) is alive.
    # foreach AdamW (its step adds a copy of the second moments: 16 GB more without stepping in backward).
    plain = _memory(methods="full", checkpointing="recompute", optimizer_fused=False)
    in_bwd = _memory(methods="full", checkpointing="recompute", optimizer_in_bwd=True, optimizer_fused=False)
    assert plain.gradients >= 2 * 8_000_000_000
    assert in_bwd.gradients <= 2 * 128256 * 4096
    assert in_bwd.peak_allocated < plain.peak_allocated - 14 * GIB


def test_fused_adamw_steps_without_temporaries() -> None:
    # foreach AdamW's `sqrt(exp_avg_sq)` copies the bf16 second moments of all 8.03B parameters at the step;
    # the fused kernel (transformers' default `adamw_torch_fused`) updates in place.
    fused = _memory(methods="full")
    foreach = _memory(methods="full", optimizer_fused=False)
    params = 8_030_261_248
    assert foreach.optimizer - fused.optimizer == 2 * params
    assert fused.optimizer == 2 * 2 * params  # exp_avg and exp_avg_sq in bf16
    assert _memory(methods="full", stack="litgpt").optimizer == foreach.optimizer  # litgpt's AdamW is foreach


def test_fused_with_an_optimizer_that_has_no_fused_kernel_is_refused() -> None:
    with pytest.raises(BadInputError, match="--optimizer adamw8bit has none"):
        peftplan.plan(LLAMA, methods="full", optimizer="adamw8bit", optimizer_fused=True, fit_search=False)


def test_paged_optimizer_states_are_outside_peak_allocated() -> None:
    paged = _memory(methods="full", optimizer="paged-adamw8bit")
    plain = _memory(methods="full", optimizer="adamw8bit")
    assert paged.paged == plain.optimizer
    assert paged.optimizer == 0
    assert paged.peak_allocated == plain.peak_allocated - plain.optimizer


def test_offloaded_checkpoints_move_block_inputs_to_the_host() -> None:
    seq = 32768
    kept = _memory(methods="qlora", seq_len=seq, checkpointing="recompute", loss="fused")
    offloaded = _memory(methods="qlora", seq_len=seq, checkpointing="offload", loss="fused")
    layers, hidden = 32, 4096
    assert offloaded.host >= layers * seq * hidden * 2  # every block's bf16 input (fp32 after peft's prep)
    assert offloaded.peak_allocated < kept.peak_allocated - (layers - 2) * seq * hidden * 2


def test_zero2_shards_states_not_weights_and_zero3_shards_both() -> None:
    single = _memory(methods="full", gpus=1)
    plan = peftplan.plan(LLAMA, methods="full", gpus=8, shard="zero2", fit_search=False)
    zero2, params = plan.methods[0].memory, plan.methods[0].trainable_params
    zero3 = _memory(methods="full", gpus=8, shard="zero3")
    assert zero2.weights == single.weights
    # ZeRO's optimizer steps fp32 partitions (stage_1_and_2.py): fp32 moments and fp32 master weights, this
    # GPU's eighth; the step peaks at the gradients' fp32 cast, before AdamW's temporaries exist.
    assert zero2.optimizer == params * 8 // 8 + params * 4 // 8
    assert zero3.weights < single.weights / 4


def test_cpu_offload_moves_sharded_states_to_the_host() -> None:
    on_gpu = _memory(methods="full", gpus=4, shard="fsdp")
    offload = _memory(methods="full", gpus=4, shard="fsdp", cpu_offload=True)
    assert offload.optimizer < on_gpu.optimizer
    assert offload.host >= on_gpu.optimizer


def test_lengths_plan_the_longest_batch_and_the_mean(tmp_path: Path) -> None:
    counts = tmp_path / "lengths.txt"
    counts.write_text("100\n512\n300\n2000\n")
    plan = peftplan.plan(LLAMA, methods="lora", seq_len=1024, lengths=counts, fit_search=False)
    assert plan.ctx.seq_len == 1024  # the longest example, capped
    assert plan.train_tokens == (100 + 512 + 300 + 1024) // 4 * 4
    short = peftplan.plan(LLAMA, methods="lora", seq_len=4096, lengths=counts, fit_search=False)
    assert short.ctx.seq_len == 2000
    packed = peftplan.plan(LLAMA, methods="lora", seq_len=4096, lengths=counts, packing=True, fit_search=False)
    assert packed.ctx.seq_len == 4096


def test_a_dataset_without_a_tokenizer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello world"}\n')
    code = main(["plan", "-m", LLAMA, "--vram", "24", "--lengths", str(data)])
    assert code == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_a_dataset_is_counted_with_its_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["hello", "world", "again", "[UNK]"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello world"}\n{"text": "hello world again again"}\n')
    plan = peftplan.plan(LLAMA, methods="lora", lengths=data, tokenizer=str(tmp_path / "tok"), fit_search=False)
    assert plan.lengths == {"count": 2, "longest": 4, "mean": 3.0, "p99": 4}
    assert plan.ctx.seq_len == 4
