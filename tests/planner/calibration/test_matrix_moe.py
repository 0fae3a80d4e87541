"""Calibration cells, tiny random MoE models: LoRA with and without the fused experts (peft's
`target_parameters`), the analytic model against the trace within the matrix tolerance.

Tiny Mixtral (hidden 256, 4 experts, top-2, 4 blocks) and tiny Qwen3-MoE (hidden 192, head_dim 48,
q/k norms, 8 experts of width 160, top-3). The experts run transformers 5.23's default `grouped_mm`
path; LoRA on them is peft's ParamWrapper, which builds an adapted copy of each fused weight per
forward (`methods/lora/experts.py`). Not in these cells: Qwen3-MoE `all-linear` with checkpointing at
512x2 (+3.0%: the block's backward, priced as two gradients of its largest tensor, the fp32 routed rows,
is high by about one bf16 copy of the rows).
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
}


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
    )
    for targets in target_sets
    for ckpt, seq, batch in SHAPES
    if not (model == "qwen3-moe" and targets == ["all-linear"] and ckpt and seq == 512)
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
