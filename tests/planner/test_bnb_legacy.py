"""bitsandbytes before 0.43.2 and Lightning's fp16 quantization: the `bnb_keeps_input` and `bnb_fp16_state` knobs.

The mechanism, checked on real torch autograd with real bitsandbytes layers: bitsandbytes <= 0.43.1's
`MatMul4Bit.forward` ends with `ctx.tensors = (A, B)` (bitsandbytes@0.42.0 bitsandbytes/autograd/_functions.py;
bitsandbytes#1270, released in 0.43.2, writes `(None, B)`). A plain attribute of the autograd node is not a
saved tensor: backward never releases it, so the input lives as long as the graph, and a loop that keeps the
step's outputs (litgpt's `logits`) keeps it into the next step. The arithmetic the analytic model prices for
it follows; docs/planner.md ("litgpt's QLoRA") has the trace of litgpt's own code against the published rows.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

import peftplan
from peftplan.errors import BadInputError
from peftplan.methods import get_method
from peftplan.models import get_spec
from peftplan.planner.activations import activation_profile
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import _moments, price, step_model
from peftplan.planner.stacks import STACKS, resolve_knobs
from peftplan.planner.trace import check_traceable

LLAMA2 = "meta-llama/Llama-2-7b-hf"  # H 4096, I 11008, 32 layers, vocabulary 32,000 (untied)
H, INTER, LAYERS, VOCAB = 4096, 11008, 32, 32000
QV = {"rank": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}


# -- the mechanism, on real autograd ------------------------------------------------------------------
def _linear4bit() -> nn.Module:
    import bitsandbytes as bnb

    from peftplan.methods.quantize import disable_cpu_repacking

    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, compress_statistics=True,
                              quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, compress_statistics=True,
                                     quant_type="nf4")
    layer = layer.to("cpu")  # bitsandbytes quantizes on the move to a device
    disable_cpu_repacking(layer)
    return layer


@contextmanager
def bitsandbytes_042_keeps_input() -> Iterator[None]:
    """Today's MatMul4Bit with 0.42.0's last line of forward: `ctx.tensors = (A, B)` when a gradient is needed."""
    from bitsandbytes.autograd import _functions

    original = _functions.MatMul4Bit.forward

    def forward(ctx: Any, A: torch.Tensor, B: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(ctx, A, B, *args, **kwargs)
        if any(ctx.needs_input_grad[:2]):
            ctx.tensors = (A, ctx.tensors[1])
        return out

    _functions.MatMul4Bit.forward = staticmethod(forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        _functions.MatMul4Bit.forward = original  # type: ignore[method-assign]


def _input_alive_after_backward(keep: bool) -> tuple[bool, bool]:
    """(alive after backward while the loss is held, alive once it is dropped) for a 4-bit layer's input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = _linear4bit()
        lora = nn.Linear(64, 64)  # makes the 4-bit layer's input need a gradient, as an adapter upstream does
        with bitsandbytes_042_keeps_input() if keep else _nothing():
            a = lora(torch.randn(8, 64)) * 2  # a fresh tensor only the 4-bit matmul could hold
            ref = weakref.ref(a)
            loss = layer(a).sum()
            del a
            loss.backward()
            gc.collect()
            held = ref() is not None
            del loss
            gc.collect()
            return held, ref() is not None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def test_bitsandbytes_today_keeps_no_input() -> None:
    """bitsandbytes >= 0.43.2 (installed: 0.50): nothing beyond autograd's own saved tensors (the knob's default)."""
    assert _input_alive_after_backward(keep=False) == (False, False)


def test_a_kept_input_outlives_backward_until_the_graph_is_dropped() -> None:
    """0.42's `ctx.tensors = (A, B)`: backward does not release it; dropping the last reference to the graph does."""
    assert _input_alive_after_backward(keep=True) == (True, False)


# -- what the analytic model prices ------------------------------------------------------------------------
def _step(stack: str = "litgpt", **knobs: Any) -> Any:
    spec = get_spec(LLAMA2)
    method = get_method("qlora")
    cfg = method.make_config(**QV)
    overrides = {k: v for k, v in knobs.items() if k in TrainContext.__dataclass_fields__}
    base = STACKS[stack].knobs.to_dict()
    base.pop("checkpointing")
    ctx = TrainContext(seq_len=512, batch_size=2, stack=stack, grad_checkpointing=False,
                       **{**base, **overrides})
    ctx = replace(ctx, optimizer="paged-adamw")
    return step_model(spec, method, cfg, ctx), spec, method, cfg, ctx


def _moment(m: Any, name: str) -> int:
    return max(x.activations + x.logits + x.gradients for x in _moments(m, 2, 512) if x.name == name)


def test_kept_inputs_are_each_4bit_linear_input_that_needs_a_gradient() -> None:
    """Per token: every block keeps its attention input, the attention output, the MLP input (gate and up share
    it) and the down projection's input (3H + I, bf16), except block 0's attention input (the embeddings need
    no gradient); the 4-bit output layer keeps the final norm's output (H)."""
    m, *_ = _step(bnb_keeps_input=True)
    per_token = LAYERS * (3 * H + INTER) * 2 - H * 2 + H * 2
    assert m.activations.kept_inputs.at(1, 1) == per_token == 1_490_944
    assert m.activations.kept_inputs.at(2, 512) == per_token * 1024


def test_litgpt_holds_the_previous_steps_kept_inputs_beside_the_forward() -> None:
    """At the output layer's last matmul: this step's kept inputs (in the saved set) and the previous step's,
    with its logits (litgpt's loop reassigns `logits` only once the next forward returns)."""
    with_knob, *_ = _step(bnb_keeps_input=True)
    without, *_ = _step(bnb_keeps_input=False)
    kept = with_knob.activations.kept_inputs.at(2, 512)
    held = with_knob.activations.held_logits.at(2, 512)
    assert held == 2 * 512 * VOCAB * 4  # fp32 logits: Fabric's convert_output (the litgpt stack's `output_fp32`)
    # This step saves the kept inputs nothing else saved (a storage is counted once: q's LoRA reads q's input)...
    added = with_knob.activations.saved.at(2, 512) - without.activations.saved.at(2, 512)
    assert 0 < added < kept
    # ...and the previous step's graph, its other saved tensors released by backward, still holds all of them.
    assert _moment(with_knob, "head-fwd") - _moment(without, "head-fwd") == added + kept + held
    # After backward the graph is alive too, until the next forward; the optimizer's moment holds it.
    assert _moment(with_knob, "optimizer") - _moment(without, "optimizer") == kept
    assert price(with_knob, 2, 512)[1] == "head-fwd"  # where litgpt's traced code peaks too (docs/planner.md)
    assert with_knob.breakdown(2, 512).peak_allocated - without.breakdown(2, 512).peak_allocated >= added + kept


def test_a_trainer_that_drops_the_loss_holds_them_for_one_step_only() -> None:
    """Without `keep_logits` (transformers' Trainer) the graph dies with the step: no moment holds two steps'."""
    with_knob, *_ = _step("hf", kbit_prep="none", bnb_keeps_input=True)
    without, *_ = _step("hf", kbit_prep="none", bnb_keeps_input=False)
    kept = with_knob.activations.kept_inputs.at(2, 512)
    added = with_knob.activations.saved.at(2, 512) - without.activations.saved.at(2, 512)
    assert 0 < added <= kept
    assert _moment(with_knob, "loss-bwd") - _moment(without, "loss-bwd") == added
    for a, b in zip(_moments(with_knob, 2, 512), _moments(without, 2, 512), strict=True):
        assert (a.activations + a.logits) - (b.activations + b.logits) <= kept, a.name
    assert _moment(with_knob, "optimizer") == _moment(without, "optimizer")


def test_checkpointed_blocks_keep_only_the_heads_input() -> None:
    """Under (reentrant) checkpointing a block's recomputed graph dies with its backward; the head's input stays."""
    m, spec, method, cfg, ctx = _step(bnb_keeps_input=True)
    profile = activation_profile(spec, method.memory_terms(spec, cfg), replace(ctx, grad_checkpointing=True))
    assert profile.ckpt_kept_inputs.at(1, 1) == H * 2


@pytest.mark.parametrize(("dtype", "fp16_state", "bytes_per_weight"),
                         [("bf16", True, 4), ("bf16", False, 2), ("fp16", True, 2)])
def test_fp16_quantization_state_dequantizes_twice_on_a_bf16_model(dtype: str, fp16_state: bool,
                                                                   bytes_per_weight: int) -> None:
    """Lightning's `_Linear4bit.quantize` casts to fp16 first, so `dequantize_4bit` returns fp16 and
    `.to(A.dtype)` makes the bf16 copy: both are alive at the matmul (bitsandbytes <= 0.49, forward and backward)."""
    m, *_ = _step(bnb_fp16_state=fp16_state)
    m = step_model(m.spec, get_method("qlora"), get_method("qlora").make_config(**QV),
                   replace(m.ctx, dtype=dtype, bnb_fp16_state=fp16_state))
    head = VOCAB * H
    logits = 2 * 512 * VOCAB * 2
    assert m.activations.head_forward.at(2, 512) == logits + head * bytes_per_weight


# -- knobs, stacks and the trace ---------------------------------------------------------------------------
def test_stack_defaults() -> None:
    """Only litgpt quantizes through Lightning (fp16 state); no stack's current code keeps 4-bit inputs
    (litgpt@2685705 pins bitsandbytes >= 0.45.2)."""
    assert {name for name, s in STACKS.items() if s.knobs.bnb_fp16_state} == {"litgpt"}
    assert not any(s.knobs.bnb_keeps_input for s in STACKS.values())
    assert resolve_knobs("litgpt", bnb_keeps_input=True).bnb_keeps_input
    with pytest.raises(BadInputError, match="true or false"):
        resolve_knobs("hf", bnb_keeps_input="yes")


def test_plan_takes_the_knobs_and_reports_them() -> None:
    plan = peftplan.plan(LLAMA2, methods="qlora", stack="litgpt", seq_len=512, batch_size=2, fit_search=False,
                         bnb_keeps_input=True, method_config=QV)
    training = plan.to_dict()["training"]
    assert training["bnb_keeps_input"] is True and training["bnb_fp16_state"] is True
    off = peftplan.plan(LLAMA2, methods="qlora", stack="litgpt", seq_len=512, batch_size=2, fit_search=False,
                        method_config=QV)
    assert plan.methods[0].memory.peak_allocated > off.methods[0].memory.peak_allocated


def test_the_trace_refuses_them_in_one_line() -> None:
    from peftplan.errors import UnsupportedError

    spec = get_spec(LLAMA2)
    qlora, lora = get_method("qlora"), get_method("lora")
    with pytest.raises(UnsupportedError) as kept:
        check_traceable(qlora, qlora.make_config(), TrainContext(bnb_keeps_input=True), spec)
    with pytest.raises(UnsupportedError) as fp16:
        check_traceable(qlora, qlora.make_config(), TrainContext(bnb_fp16_state=True), spec)
    for exc in (kept, fp16):
        assert "\n" not in str(exc.value)
    assert "0.43.2" in str(kept.value) and "--no-bnb-fp16-state" in str(fp16.value)
    check_traceable(lora, lora.make_config(), TrainContext(bnb_fp16_state=True), spec)  # nothing quantized
