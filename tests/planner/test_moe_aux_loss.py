"""The MoE load-balancing loss (transformers' `load_balancing_loss_func`), priced when the config's
`output_router_logits` is on: which model types compute it, the trace equal to the real step with it, and
the analytic model's extra bytes equal to the trace's (a tiny Qwen3-MoE with 64 experts, where the router
logits are as large as the hidden states)."""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from peftplan.models.arch import AUX_LOSS_TYPES
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.context import TrainContext
from tests.planner.test_trace_reality import TINY_MIXTRAL, assert_same_step

WIDE_QWEN3_MOE = {
    **catalog_config_dict("Qwen/Qwen3-30B-A3B"),
    "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 1024, "bos_token_id": 0, "eos_token_id": 1, "intermediate_size": 128,
    "moe_intermediate_size": 32, "num_experts": 64, "num_experts_per_tok": 2, "mlp_only_layers": [],
}


def _causal_lm_forward(model_type: str) -> str:
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    classes = [c for name, c in vars(module).items() if name.endswith("ForCausalLM") and inspect.isclass(c)]
    return "".join(inspect.getsource(c.forward) for c in classes)


@pytest.mark.parametrize("model_type", sorted(AUX_LOSS_TYPES | {"deepseek_v2", "deepseek_v3"}))
def test_aux_loss_types_are_the_models_that_add_it(model_type: str) -> None:
    adds = "load_balancing_loss_func(" in _causal_lm_forward(model_type)
    assert adds == (model_type in AUX_LOSS_TYPES)


def test_catalog_moe_models_do_not_compute_it_by_default() -> None:
    from peftplan.models import get_spec
    from peftplan.models.arch import arch_of

    for model_id in ("mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen3-30B-A3B", "openai/gpt-oss-20b",
                     "deepseek-ai/DeepSeek-V2-Lite"):
        assert catalog_config_dict(model_id).get("output_router_logits") in (False, None), model_id
        assert not arch_of(get_spec(model_id)).moe_aux_loss


def test_trace_equals_the_real_step_with_the_aux_loss() -> None:
    config = {**TINY_MIXTRAL, "output_router_logits": True}
    assert assert_same_step(config, "lora", TrainContext(seq_len=32, batch_size=2), depth=2) > \
        assert_same_step(TINY_MIXTRAL, "lora", TrainContext(seq_len=32, batch_size=2), depth=2)


@pytest.mark.parametrize("ckpt", [False, True], ids=["nockpt", "ckpt"])
def test_analytic_prices_what_the_aux_loss_adds_to_the_trace(tmp_path: Path, ckpt: bool) -> None:
    from peftplan.methods import get_method
    from peftplan.models import get_spec
    from peftplan.planner.memory import estimate_memory
    from peftplan.planner.trace import trace_memory
    from tests.planner.calibration.matrix import TOLERANCE

    method = get_method("lora")
    cfg = method.make_config(targets=["attn"])
    ctx = TrainContext(seq_len=512, batch_size=2, grad_checkpointing=ckpt, device="cpu")
    peaks: dict[bool, tuple[int, int]] = {}
    for aux in (False, True):
        directory = tmp_path / f"aux{int(aux)}"
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({**WIDE_QWEN3_MOE, "output_router_logits": aux}))
        spec = get_spec(str(directory))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced: Any = trace_memory(spec, method, cfg, ctx)
        analytic = estimate_memory(spec, method, cfg, ctx)
        peaks[aux] = (traced.memory.peak_allocated, analytic.peak_allocated)
        error = (analytic.peak_allocated - traced.memory.peak_allocated) / traced.memory.peak_allocated
        assert abs(error) <= TOLERANCE, f"aux {aux}: analytic {error:+.2%} off the trace"
    # At the backward's peak (the loss's, or the last block's recomputation) every MoE block's router-logit
    # gradient waits: 4 blocks x 1,024 tokens x 64 experts x 2 bytes.
    added = 4 * 1024 * 64 * 2
    assert peaks[True][0] - peaks[False][0] == added
    assert peaks[True][1] - peaks[False][1] == added
