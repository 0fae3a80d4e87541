"""Calibration cells, tiny random MoE models: LoRA with and without the fused experts (peft's
`target_parameters`), the analytic model against the trace within the matrix tolerance.

Tiny Mixtral (hidden 256, 4 experts, top-2, 4 blocks), tiny Qwen3-MoE (hidden 192, head_dim 48,
q/k norms, 8 experts of width 160, top-3), tiny gpt-oss (hidden 256, 4 heads of 64 over 2 kv heads, eager
attention with sinks, sliding window 128 on alternate blocks, 4 experts of width 256 with biases, top-2) and
tiny DeepSeek-V2-Lite (hidden 256, MLA with kv_lora_rank 64, qk 32+16, v 32 per head, block 0 dense,
8 routed experts of width 128, top-3, 2 shared). The experts run transformers 5.23's default `grouped_mm`
path; LoRA on them is peft's ParamWrapper, which builds an adapted copy of each fused weight per
forward (`methods/lora/experts.py`). Every cell is in: with checkpointing the recomputed block's backward is
replayed op by op (`Graph.backward_moment` beside what the block saved so far: the routed rows' first backward,
gpt-oss's sinks attention, DeepSeek's MLA math kernel), the gradient made before the recomputation starts
(`Graph.pending_gradient`), the recomputation's early stop, the forward's live rows and gathered biases, and the
eager masks the checkpoints hold; see docs/models.md ("gpt-oss and DeepSeek-V2").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftplan.models.catalog import catalog_config_dict
from tests.planner.calibration.matrix import check_spec_cell

TINY = {
    "mixtral": ("mistralai/Mixtral-8x7B-v0.1", {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 1024, "intermediate_size": 512, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3-moe": ("Qwen/Qwen3-30B-A3B", {
        "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 48, "vocab_size": 1024, "bos_token_id": 0, "eos_token_id": 1, "intermediate_size": 384,
        "moe_intermediate_size": 160, "num_experts": 8, "num_experts_per_tok": 3, "mlp_only_layers": []}),
    "gpt-oss": ("openai/gpt-oss-20b", {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 1024, "intermediate_size": 256, "num_local_experts": 4,
        "num_experts_per_tok": 2, "experts_per_token": 2, "pad_token_id": 0, "eos_token_id": 1,
        "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 2}),
    "deepseek-v2-lite": ("deepseek-ai/DeepSeek-V2-Lite", {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
        "vocab_size": 1024, "bos_token_id": 0, "eos_token_id": 1, "intermediate_size": 512,
        "moe_intermediate_size": 128, "n_routed_experts": 8, "num_experts_per_tok": 3, "n_shared_experts": 2,
        "first_k_dense_replace": 1, "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16,
        "v_head_dim": 32}),
}
# Cells the analytic model misses by more than the tolerance (see the module docstring): none.
MISSES: set[tuple[str, str, bool, int]] = set()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, (base, overrides) in TINY.items():
        directory: Path = tmp_path_factory.mktemp(name)
        (directory / "config.json").write_text(json.dumps({**catalog_config_dict(base), **overrides}))
        out[name] = str(directory)
    return out


SHAPES = ((False, 256, 1), (False, 512, 2), (True, 256, 1), (True, 512, 2))
CELLS = [
    pytest.param(model, targets, ckpt, seq, batch,
                 id=f"{model}-{','.join(targets)}-{'ckpt' if ckpt else 'nockpt'}-{seq}x{batch}")
    for model, target_sets in (
        ("mixtral", (["attn"], ["all-linear"], ["experts.gate_up_proj", "experts.down_proj"])),
        ("qwen3-moe", (["attn"], ["all-linear"])),
        ("gpt-oss", (["attn"], ["all-linear"])),
        ("deepseek-v2-lite", (["attn"], ["all-linear"])),
    )
    for targets in target_sets
    for ckpt, seq, batch in SHAPES
    if (model, ",".join(targets), ckpt, seq) not in MISSES
]


@pytest.mark.parametrize(("model", "targets", "ckpt", "seq", "batch"), CELLS)
def test_lora_on_experts_within_tolerance_of_trace(
    tiny_dirs: dict[str, str], model: str, targets: list[str], ckpt: bool, seq: int, batch: int,
) -> None:
    from peftplan.methods import get_method
    from peftplan.models import get_spec
    from peftplan.planner.context import TrainContext

    cfg = get_method("lora").make_config(targets=targets)
    ctx = TrainContext(seq_len=seq, batch_size=batch, grad_checkpointing=ckpt, device="cpu")
    check_spec_cell(get_spec(tiny_dirs[model]), "lora", cfg, ctx)
