"""`--stack litgpt` prices litgpt's own model code (`model_code=litgpt`, `output_fp32`): checked by hand and
against a trace of litgpt 0.5.13's real training step.

The analytic replay (planner/blocks.py `_litgpt_attention`, activations.py `loss_terms`) follows litgpt's
model at the published rows' commits; litgpt 0.5.13 (the side venv `make stacks` builds, `.venv-litgpt`)
keeps the same saved tensors (its q, k, v are split instead of interleaved since fabf765b).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from peftplan.api import train_context
from peftplan.methods import get_method
from peftplan.models import spec_from_config
from peftplan.planner.memory import estimate_memory, step_model

ROOT = Path(__file__).resolve().parents[2]
LITGPT_PYTHON = ROOT / ".venv-litgpt" / "bin" / "python"
TRACE = Path(__file__).resolve().parent / "stack_checks" / "litgpt_trace.py"
HIDDEN, HEADS, INTERMEDIATE, VOCAB, LAYERS, RANK = 128, 4, 256, 512, 2, 8


def _spec(kv_heads: int, seq: int):  # type: ignore[no-untyped-def]
    """The transformers Llama config with the shapes of the tiny litgpt `Config` the trace builds."""
    return spec_from_config({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": kv_heads,
        "intermediate_size": INTERMEDIATE, "vocab_size": VOCAB, "max_position_embeddings": seq,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "hidden_act": "silu", "head_dim": HIDDEN // HEADS,
    }, model_id=f"tiny-llama-kv{kv_heads}")


def _step(kv_heads: int, batch: int, seq: int, device: str = "cuda", **knobs: object):  # type: ignore[no-untyped-def]
    method = get_method("lora")
    cfg = method.make_config(rank=RANK, alpha=16, dropout=0.05, targets=["q_proj", "v_proj"])
    ctx = train_context(stack="litgpt", knobs=knobs, grad_ckpt=False, seq_len=seq, batch_size=batch,
                        optimizer="adamw", dtype="bf16", attn="sdpa", gpus=1, shard="none", cpu_offload=False,
                        device=device)
    return _spec(kv_heads, seq), method, cfg, ctx


def _blocks_saved(kv_heads: int, **knobs: object) -> int:
    spec, method, cfg, ctx = _step(kv_heads, 2, 256, **knobs)
    return step_model(spec, method, cfg, ctx).activations.blocks_saved.at(2, 256)  # type: ignore[no-any-return]


def test_litgpt_stack_sets_its_model_code_and_fabric_cast() -> None:
    ctx = _step(2, 1, 64)[3]
    assert (ctx.model_code, ctx.output_fp32) == ("litgpt", True)


@pytest.mark.parametrize(("kv_heads", "per_token", "index"), [(HEADS, 11 * HIDDEN, 2 * HIDDEN), (2, 5 * HIDDEN, 3 * HIDDEN // 2)])
def test_litgpt_attention_saves_the_hand_counted_bytes(kv_heads: int, per_token: int, index: int) -> None:
    """Bytes per token over the two blocks, bf16 on CUDA, LoRA r8 on q and v with dropout, minus transformers'.

    transformers (SDPA, GQA native): SDPA saves q, k, v and the output (2·(2H + 2·kv)); peft's q and v LoRA
    each save the dropped input (2H), its bool mask (H; block 0's input needs no gradient, so no mask there)
    and lora_A's output (2r). litgpt (lit_gpt/model.py l.196-229 @8641822, lora.py l.375-386): SDPA saves q
    and k after `torch.cat` (2H each) and the output; with one query per group v is a view of the fused qkv
    output and keeps all of it (2·3H), with grouped queries an expanded copy (2H); LoRAQKVLinear has one
    dropout (2H, and H of mask after block 0) and one lora_A of 2r rows (2·2r); `zero_pad`'s `index_copy`
    saves its source, the q and v update (2·(H + kv)), and its int64 index of H + kv entries per block.
    MHA: SDPA +4H; LoRA -2H in block 0, -3H in block 1; zero_pad +4H per block: +2H + H + 8H.
    GQA (kv = H/2): SDPA +2H; zero_pad +3H per block: 0 - H + 6H.
    """
    tokens = 2 * 256
    litgpt = _blocks_saved(kv_heads)
    transformers = _blocks_saved(kv_heads, model_code="transformers")
    assert litgpt - transformers == per_token * tokens + LAYERS * index * 8


def test_fabric_cast_makes_the_held_logits_and_loss_rows_fp32() -> None:
    """`_FabricModule.forward` ends with `precision.convert_output(output)` (lightning fabric/wrappers.py l.123
    @71aed75): every chunk's logits become fp32 (4 bytes), which the loop holds and `chunked_cross_entropy`'s
    log-softmax saves (4 bytes); without it both are the logits' bf16 (2 bytes)."""
    spec, method, cfg, ctx = _step(2, 2, 256)
    act = step_model(spec, method, cfg, ctx).activations
    _, _, _, plain = _step(2, 2, 256, output_fp32=False)
    bare = step_model(spec, method, cfg, plain).activations
    logits = 2 * 256 * VOCAB
    assert (act.held_logits.at(2, 256), bare.held_logits.at(2, 256)) == (4 * logits, 2 * logits)
    assert (act.logits_saved.at(2, 256), bare.logits_saved.at(2, 256)) == (4 * logits, 2 * logits)


SHAPES = [
    {"batch": 2, "seq": 256, "n_query_groups": 2},
    {"batch": 2, "seq": 256, "n_query_groups": HEADS},
    {"batch": 1, "seq": 512, "n_query_groups": 2},
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s['batch']}-s{s['seq']}-kv{s['n_query_groups']}")
def test_litgpt_replay_matches_a_trace_of_litgpt_itself(shape: dict[str, int]) -> None:
    """litgpt 0.5.13's own `GPT` with its LoRA, built and set up by Fabric in bf16-true on the CPU, one steady
    training step of its finetune loop, live bytes counted (stack_checks/litgpt_trace.py), against the
    analytic `--stack litgpt` plan at the same shapes on the CPU. Within 4%, and far closer than the same
    stack priced with transformers' blocks and bf16 logits."""
    if not LITGPT_PYTHON.exists():
        pytest.skip("litgpt's venv is absent: `make stacks` could not install litgpt 0.5.13 (.venv-litgpt)")
    probe = subprocess.run([str(LITGPT_PYTHON), "-c", "import litgpt, lightning"], capture_output=True, text=True,
                           timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"litgpt is not importable in .venv-litgpt: {probe.stderr.strip().splitlines()[-1:]}")
    result = subprocess.run([str(LITGPT_PYTHON), str(TRACE), json.dumps(shape)], capture_output=True, text=True,
                            timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    traced = json.loads(result.stdout.strip().splitlines()[-1])
    spec, method, cfg, ctx = _step(shape["n_query_groups"], shape["batch"], shape["seq"], device="cpu")
    # litgpt's lora_A (2r x H) and lora_B ((q + v widths) x r) per block: peft's q and v adapters' count.
    assert traced["trainable"] == LAYERS * RANK * (2 * HIDDEN + HIDDEN + HIDDEN // HEADS * shape["n_query_groups"])
    litgpt = estimate_memory(spec, method, cfg, ctx).peak_allocated
    _, _, _, hf_blocks = _step(shape["n_query_groups"], shape["batch"], shape["seq"], device="cpu",
                               model_code="transformers", output_fp32=False)
    transformers = estimate_memory(spec, method, cfg, hf_blocks).peak_allocated
    error = (litgpt - traced["peak"]) / traced["peak"]
    assert abs(error) <= 0.04, (litgpt, traced)
    assert abs(error) * 4 < abs(transformers - traced["peak"]) / traced["peak"]
