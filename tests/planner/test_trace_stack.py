"""The training-stack techniques of the traced step compute what the stacks compute, count host copies as the
device would, and refuse what the trace cannot run (planner/trace_stack.py, planner/trace.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftplan.errors import BadInputError, UnsupportedError
from peftplan.models import get_spec
from peftplan.planner.context import TrainContext
from peftplan.planner.livebytes import LiveBytes
from peftplan.planner.trace import check_stack_knobs
from peftplan.planner.trace_stack import (
    FusedLinearCrossEntropy,
    Host,
    OffloadedCheckpoint,
    save_on_host,
    step_in_backward,
)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_fused_loss_equals_cross_entropy_and_its_gradients(softcap: float | None) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    target = torch.randint(50, (37,))
    target[[3, 10]] = -100
    fused = FusedLinearCrossEntropy.apply(hidden, weight, target, bias, softcap, (target != -100).sum())
    (2 * fused).backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    logits = hidden @ weight.t() + bias
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    reference = F.cross_entropy(logits, target, ignore_index=-100)
    (2 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)  # Liger's per-row losses are fp32
    for got, want in zip(grads, (hidden.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def _block() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))


def test_offloaded_checkpoint_keeps_the_input_on_the_host_and_the_gradients_exact() -> None:
    block, x = _block(), torch.randn(32, 64, requires_grad=True)
    block(x).sum().backward()
    want = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad(set_to_none=True)
    x.grad = None
    lb = LiveBytes()
    lb.track([x])
    lb.track_module(block)
    before = lb.current
    with lb:
        hidden = x * 1  # a block input the step made (the offloaded copy replaces it)
        out = OffloadedCheckpoint.apply(block, Host(lb.uncounted), hidden)
        del hidden
        after_forward = lb.current
        out.sum().backward()
    # What the forward leaves on the device: the block's output; its input's copy is on the host.
    assert after_forward - before == 32 * 64 * 4
    got = [p.grad for p in block.parameters()] + [x.grad]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_save_on_host_moves_saved_tensors_off_the_device_and_back_when_needed() -> None:
    block, x = _block(), torch.randn(32, 64, requires_grad=True)
    peaks = {}
    for offload in (False, True):
        block.zero_grad(set_to_none=True)
        x.grad = None
        lb = LiveBytes()
        lb.track([x])
        lb.track_module(block)
        with lb:
            if offload:
                with save_on_host(Host(lb.uncounted)):
                    out = block(x)
            else:
                out = block(x)
            peaks[offload] = lb.current
            out.sum().backward()
    # Unoffloaded, the step holds the hidden activations (256 wide, GELU's input and output); offloaded
    # only the output and x remain on the device until backward brings each saved tensor back.
    assert peaks[False] - peaks[True] == 2 * 32 * 256 * 4


def test_optimizer_in_backward_steps_each_parameter_and_frees_its_gradient() -> None:
    block = _block()
    before = [p.detach().clone() for p in block.parameters()]
    optimizers = {p: torch.optim.SGD([p], lr=0.1) for p in block.parameters()}
    handles = step_in_backward(optimizers)
    block(torch.randn(8, 64)).sum().backward()
    for handle in handles:
        handle.remove()
    assert all(p.grad is None for p in block.parameters())
    assert all(not torch.equal(p, b) for p, b in zip(block.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("knobs", "error", "says"),
    [
        ({"kernels": "unsloth"}, UnsupportedError, "Triton-only"),
        ({"loss": "fused", "loss_chunk_tokens": 4096}, UnsupportedError, "TRL's fused LM head"),
        ({"ckpt_offload": True}, BadInputError, "need checkpointing"),
        ({"loss": "chunked", "loss_recompute": True, "loss_fp32": False}, UnsupportedError, "always computes in fp32"),
    ],
)
def test_knobs_the_trace_cannot_run_are_refused_in_one_line(knobs: dict, error: type, says: str) -> None:
    with pytest.raises(error, match=says) as caught:
        check_stack_knobs(TrainContext(**knobs), get_spec("meta-llama/Llama-3.2-1B"))
    assert "\n" not in str(caught.value)


def test_a_causal_loss_is_refused_on_an_encoder() -> None:
    with pytest.raises(UnsupportedError, match="is an encoder"):
        check_stack_knobs(TrainContext(loss="chunked"), get_spec("FacebookAI/roberta-base"))
