"""The training stacks' memory techniques, as the traced step runs them (see planner/stacks.py for the knobs).

The same code runs on fake tensors (the trace) and on real CPU tensors (tests/planner/test_trace_reality.py),
and each technique is written as its stack writes it, in plain torch:

- losses (`stack_loss`): transformers' `ForCausalLMLoss` without its upcast, or as before 4.45 (the model's
  fp32 logits and shifted copies); torchtune 0.6.1's
  `chunked_output` + `CEWithChunkedOutputLoss`; litgpt's chunked output layer with `chunked_cross_entropy`
  (the loop holds the logits); TRL's checkpointed `chunked_nll`; and `FusedLinearCrossEntropy`, which
  reproduces the memory semantics of Liger's fused linear cross-entropy, not its Triton kernel (which
  cannot run here);
- `Host`, `save_on_host` (torch's `save_on_cpu`), `OffloadedCheckpoint` (Unsloth's offloaded checkpoint);
- `step_in_backward`: torchtune's optimizer step inside backward.

Where the real code branches on data (a count of valid tokens, an emptiness check), the fake batch has
no values: the answer comes from the batch's known layout (`Batch`), and the same ops still run.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from peftplan.errors import UnsupportedError

if TYPE_CHECKING:
    from torch import nn

    from peftplan.planner.context import TrainContext

__all__ = [
    "Batch",
    "FusedLinearCrossEntropy",
    "Host",
    "OffloadedCheckpoint",
    "offload_block_activations",
    "save_on_host",
    "stack_loss",
    "step_in_backward",
]

IGNORE = -100


# -- the host: where offloaded tensors live ----------------------------------------------------------------
class Host:
    """Host memory for offloaded tensors.

    On a GPU the copies really go to (pinned) CPU memory. On a CPU-only run the host is the device itself:
    the copy is still made, so that the device tensor it replaces can be freed as on a GPU, and `uncounted`
    (the live-bytes tracker's scope) keeps it out of the device's bytes. What comes back is device memory.
    """

    def __init__(self, uncounted: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        self.uncounted = uncounted
        self._storages: dict[int, weakref.ref[Any]] = {}

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of `tensor` (torch's `save_on_cpu(pin_memory=True)` packing)."""
        pin = tensor.device.type == "cuda"
        with self.uncounted():
            packed = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=pin)
            packed.copy_(tensor)
        storage = packed.untyped_storage()
        key = id(storage)
        self._storages[key] = weakref.ref(storage, self._forget(key))
        return packed

    def _forget(self, key: int) -> Callable[[Any], None]:
        def freed(_: Any) -> None:
            self._storages.pop(key, None)

        return freed

    def get(self, packed: torch.Tensor, device: torch.device) -> torch.Tensor:
        """`packed` back on `device`: always a new device tensor (CPU to CPU too)."""
        return packed.to(device, copy=True, non_blocking=packed.is_pinned())

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` is one of this host's copies (already off the device)."""
        return id(tensor.untyped_storage()) in self._storages


def save_on_host(host: Host) -> torch.autograd.graph.saved_tensors_hooks:
    """torch's `torch.autograd.graph.save_on_cpu`: every tensor autograd saves is packed to the host, and
    copied back to the device each time backward unpacks it. (On a CPU-only machine `save_on_cpu` itself
    would pack a CPU tensor as itself, so the copies are made through `host`.)"""

    def pack(tensor: torch.Tensor) -> tuple[torch.device | None, torch.Tensor]:
        if host.holds(tensor):
            return None, tensor  # already on the host (Unsloth's checkpointed input)
        return tensor.device, host.put(tensor)

    def unpack(packed: tuple[torch.device | None, torch.Tensor]) -> torch.Tensor:
        device, tensor = packed
        return tensor if device is None else host.get(tensor, device)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def offload_block_activations(layers: nn.ModuleList, host: Host) -> list[Any]:
    """Offload what every block saves, as torchtune's `OffloadActivations` around the decoder layers does
    (the output layer and the loss keep theirs on the device) with `save_on_cpu`'s semantics. Returns
    the hook handles. A checkpointed block's saved input is offloaded too: non-reentrant checkpointing
    saves it through the active hooks."""
    handles: list[Any] = []
    scopes: list[Any] = []

    def enter(module: Any, args: Any) -> None:
        scope = save_on_host(host)
        scope.__enter__()
        scopes.append(scope)

    def leave(module: Any, args: Any, output: Any) -> None:
        if scopes:
            scopes.pop().__exit__(None, None, None)

    for layer in layers:
        handles.append(layer.register_forward_pre_hook(enter))
        handles.append(layer.register_forward_hook(leave, always_call=True))
    return handles


class OffloadedCheckpoint(torch.autograd.Function):
    """Unsloth's offloaded gradient checkpoint (`Unsloth_Offloaded_Gradient_Checkpointer`, unsloth-zoo):
    the block's input is copied to the host and the block runs under no_grad; backward copies the input
    back, recomputes the block with grad and backpropagates through it. (Unsloth's newer `unsloth_checkpoint`
    keeps the last block's input on the device and copies back into two reused device buffers: the same
    bytes within one block input or two.)"""

    @staticmethod
    def forward(ctx: Any, run: Callable[..., Any], host: Host, hidden: torch.Tensor, *args: Any) -> Any:
        ctx.device = hidden.device
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        saved = host.put(hidden)
        with torch.no_grad():
            output = run(hidden, *args)
        ctx.save_for_backward(saved)
        ctx.run, ctx.host, ctx.args = run, host, args
        return output

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        (saved,) = ctx.saved_tensors
        hidden = ctx.host.get(saved, ctx.device).detach()
        hidden.requires_grad_(True)
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            output = ctx.run(hidden, *ctx.args)
        outputs = output if isinstance(output, tuple) else (output,)
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=False)
                 if isinstance(o, torch.Tensor) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None, hidden.grad) + (None,) * len(ctx.args)


def offloaded_checkpoint(host: Host) -> Callable[..., Any]:
    """A drop-in for transformers' `_gradient_checkpointing_func` (as Unsloth patches it)."""

    def checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return OffloadedCheckpoint.apply(function, host, *args)

    return checkpoint


# -- optimizer step inside backward ---------------------------------------------------------------------------
def step_in_backward(optimizers: dict[Any, Any], on_step: Callable[[Any], None] | None = None) -> list[Any]:
    """torchtune's `register_optim_in_bwd_hooks`: one optimizer per parameter, stepped as soon as its
    gradient is accumulated, then `zero_grad()` (set to None). Returns the hook handles."""

    def optim_step(param: Any) -> None:
        if on_step is not None:
            on_step(param)
        optimizers[param].step()
        optimizers[param].zero_grad()

    return [p.register_post_accumulate_grad_hook(optim_step) for p in optimizers]


# -- losses ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """The traced batch's layout: `rows` sequences of `length` positions, the first `padded` of which are
    virtual tokens (prompt tuning) whose labels the loop pads with -100. Every other label is a token."""

    rows: int
    length: int
    padded: int = 0

    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        """The labels as the loop gives them: the ids, -100 in front for virtual tokens."""
        if not self.padded:
            return ids
        return torch.cat([torch.full((ids.shape[0], self.padded), IGNORE, dtype=ids.dtype), ids], dim=1)

    def ignored(self) -> set[int]:
        """Positions whose shifted label (position i predicts label i + 1) is -100."""
        return set(range(max(self.padded - 1, 0))) | {self.length - 1}

    @property
    def valid(self) -> int:
        """How many shifted labels are tokens (what the stacks count with `(labels != -100).sum()`)."""
        return self.rows * (self.length - len(self.ignored()))


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """transformers' shift (`ForCausalLMLoss`, Liger's `LigerForCausalLMLoss`): pad, then drop the first."""
    labels = F.pad(labels, (0, 1), value=IGNORE)
    return labels[..., 1:].contiguous()


@contextmanager
def captured_hidden(head: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Run the model with its output layer replaced by one that keeps its input (the last hidden state)
    and returns an empty tensor: the real forward (peft's prompt tokens, soft-capping) runs, and no
    logits are made. The stacks' losses then apply the output layer themselves."""
    box: dict[str, torch.Tensor] = {}

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        box["hidden"] = hidden
        return hidden[..., :0]

    head.forward = capture  # type: ignore[method-assign]
    try:
        yield box
    finally:
        del head.forward


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """transformers' final logit soft-capping (Gemma-2): divide, tanh, multiply."""
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _full(head_call: Callable[..., Any], hidden: torch.Tensor, labels: torch.Tensor, ctx: TrainContext,
          cap: float | None) -> tuple[torch.Tensor, Any]:
    """transformers' `ForCausalLMLoss`, with the upcast only when `loss_fp32`."""
    logits = _softcap(head_call(hidden), cap)
    if ctx.output_fp32:  # Fabric's `convert_output`: the loop gets fp32 logits
        logits = logits.to(dtype=torch.float32)
    scores = logits.float() if ctx.loss_fp32 else logits
    shift = shifted_labels(labels)
    loss = F.cross_entropy(scores.view(-1, scores.size(-1)), shift.view(-1), ignore_index=IGNORE)
    del scores
    return loss, logits


def _chunks(hidden: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, ...]:
    """The last hidden state cut along the sequence: `loss_chunks` chunks (torchtune's `.chunk`), or
    chunks of `loss_chunk_tokens` positions (litgpt's `lm_head_chunk_size`)."""
    if ctx.loss_chunk_tokens:
        return hidden.split(ctx.loss_chunk_tokens, dim=1)
    return hidden.chunk(ctx.loss_chunks, dim=1)


def _legacy(head_call: Callable[..., Any], hidden: torch.Tensor, labels: torch.Tensor,
            cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers before 4.45 (`LlamaForCausalLM.forward` in 4.44 and its peers): the model upcasts its
    logits (`logits.float()`, soft-capped first for Gemma-2) and the loss takes contiguous shifted copies."""
    logits = _softcap(head_call(hidden), cap)
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    loss = F.cross_entropy(shift_logits.view(-1, logits.size(-1)), shift_labels.view(-1))
    return loss, logits


def _torchtune(head_call: Callable[..., Any], hidden: torch.Tensor, labels: torch.Tensor,
               ctx: TrainContext) -> torch.Tensor:
    """torchtune 0.6.1: `TransformerDecoder.chunked_output` (the output layer per chunk of the sequence),
    the recipe's label shift (`hstack` with an ignore column) and `CEWithChunkedOutputLoss` (each chunk
    upcast and cross-entropied in turn); the recipe deletes the logits before backward. (torchtune's
    Gemma-2 soft-caps the normed hidden state in its final norm, not the logits: no soft-capping here.)"""
    logits = [head_call(chunk) for chunk in _chunks(hidden, ctx)]
    labels = torch.hstack((labels[..., 1:], torch.full((labels.shape[0], 1), IGNORE, dtype=labels.dtype)))
    total_elements = (labels != IGNORE).sum()
    label_chunks = [chunk.reshape(-1) for chunk in labels.split([c.shape[1] for c in logits], dim=1)]
    logit_chunks = [chunk.reshape(-1, chunk.size(-1)) for chunk in logits]
    del logits
    total_loss: Any = 0.0
    for logits_chunk, labels_chunk in zip(logit_chunks, label_chunks, strict=True):
        total_loss += F.cross_entropy(logits_chunk.float() if ctx.loss_fp32 else logits_chunk, labels_chunk,
                                      ignore_index=IGNORE, reduction="sum")
    return total_loss / total_elements


def _litgpt(head_call: Callable[..., Any], hidden: torch.Tensor, labels: torch.Tensor, ctx: TrainContext,
            cap: float | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """litgpt: `GPT.forward(lm_head_chunk_size=...)` returns the output layer's logits per chunk of
    positions, the loop trims the last position and calls `chunked_cross_entropy` on the list, and keeps
    `logits` until the step is done. (`max(1, non_masked_elems)` is `clamp(min=1)`: the same value
    without asking a fake tensor for its data.)"""
    logits = [_softcap(head_call(piece), cap) for piece in _chunks(hidden, ctx)]
    if ctx.output_fp32:  # Fabric's `convert_output`: `_convert_fp_tensor` on each chunk, the list kept
        logits = [chunk.to(dtype=torch.float32) for chunk in logits]
    logits[-1] = logits[-1][..., :-1, :]
    targets = labels[..., 1:]
    ignore_index = -1  # litgpt's default; no label is -1
    logit_chunks = [chunk.reshape(-1, chunk.size(-1)) for chunk in logits]
    target_chunks = [chunk.reshape(-1) for chunk in targets.split(logits[0].size(1), dim=1)]
    loss_chunks = [
        F.cross_entropy(chunk.float() if ctx.loss_fp32 else chunk, target, ignore_index=ignore_index,
                        reduction="none")
        for chunk, target in zip(logit_chunks, target_chunks, strict=False)
    ]
    del logit_chunks
    non_masked_elems = (targets != ignore_index).sum()
    return torch.cat(loss_chunks).sum() / non_masked_elems.clamp(min=1), logits


def _trl_chunk(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, lbl: torch.Tensor, logit_scale: float,
               final_logit_softcapping: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's `_chunk` (trl/trainer/sft_trainer.py)."""
    logits = h.float() @ w.float().t()
    if b is not None:
        logits = logits + b.float()
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if final_logit_softcapping is not None:
        logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
    log_p = F.log_softmax(logits, dim=-1)
    chunk_loss = F.nll_loss(log_p, lbl, ignore_index=IGNORE, reduction="sum")
    valid = lbl != IGNORE
    chunk_correct = ((logits.argmax(dim=-1) == lbl) & valid).sum().float()
    chunk_entropy = (-(log_p.exp() * log_p).sum(dim=-1) * valid).sum()
    return chunk_loss, chunk_correct, chunk_entropy


def _trl(head: nn.Module, hidden_states: torch.Tensor, labels: torch.Tensor, batch: Batch, ctx: TrainContext,
         cap: float | None, logit_scale: float) -> torch.Tensor:
    """TRL's `_chunked_cross_entropy_loss` (the `chunked_nll` loss, SFTTrainer's default): valid tokens
    packed to the front by `argsort`, then checkpointed chunks of `chunk_size` tokens. The count of valid
    tokens (`n_valid_tensor`, and the chunk count TRL derives from it) comes from the batch's layout."""
    hidden = hidden_states[..., :-1, :].reshape(-1, hidden_states.size(-1))
    targets = labels[..., 1:].reshape(-1)
    valid = targets != IGNORE
    n_valid_tensor = valid.sum()
    n_valid = batch.valid
    chunk_size = ctx.loss_chunk_tokens or max(1, math.ceil(n_valid / ctx.loss_chunks))
    correct = hidden.new_zeros((), dtype=torch.float32)
    entropy_sum = hidden.new_zeros((), dtype=torch.float32)
    order = valid.to(torch.int8).argsort(descending=True, stable=True)
    hidden = hidden[order]
    targets = targets[order]
    n_padded = math.ceil(n_valid / chunk_size) * chunk_size
    loss = hidden.new_zeros((), dtype=torch.float32)
    weight, bias = head.weight, getattr(head, "bias", None)
    for start in range(0, n_padded, chunk_size):
        h_chunk = hidden[start : start + chunk_size]
        lbl_chunk = targets[start : start + chunk_size]
        chunk_loss, chunk_correct, chunk_entropy = torch.utils.checkpoint.checkpoint(
            _trl_chunk, h_chunk, weight, bias, lbl_chunk, logit_scale, cap, use_reentrant=False
        )
        loss = loss + chunk_loss
        correct = correct + chunk_correct
        entropy_sum = entropy_sum + chunk_entropy
    return loss / n_valid_tensor


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Liger's fused linear cross-entropy (`LigerFusedLinearCrossEntropyFunction`, reduction "mean"),
    in plain torch. It reproduces the memory semantics, not the kernel, which is Triton-only.

    Forward, per chunk of `next_power_of_2(ceil(BT / ceil(V / H)))` tokens: the chunk's logits, the
    gradient of the loss with respect to them written over them (the kernel's softmax is computed in
    place; plain torch needs one fp32 block of the chunk's size for it), the chunk's rows of the input
    gradient, and the weight gradient accumulated in place. The input gradient (as large as the hidden
    states) and the weight gradient are kept for backward, which only scales them.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None, softcap: float | None, n_valid: torch.Tensor) -> torch.Tensor:
        bt, width = hidden.shape
        vocab = weight.shape[0]
        inc_factor = math.ceil(vocab / width)
        chunk_size = min(_next_power_of_2(math.ceil(bt / inc_factor)), bt)
        grad_input = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias) if bias is not None and bias.requires_grad else None
        loss_1d = torch.zeros(bt, dtype=torch.float32)
        for start in range(0, bt, chunk_size):
            end = min(start + chunk_size, bt)
            input_chunk = hidden[start:end]
            logits_chunk = input_chunk @ weight.t()
            if bias is not None:
                logits_chunk = logits_chunk + bias
            _cross_entropy_kernel(logits_chunk, target[start:end], loss_1d[start:end], n_valid, softcap)
            grad_input[start:end] = logits_chunk @ weight
            if grad_weight is not None:
                grad_weight.addmm_(logits_chunk.t().to(grad_weight.dtype), input_chunk.to(grad_weight.dtype))
            if grad_bias is not None:
                grad_bias.add_(logits_chunk.sum(dim=0))
            del logits_chunk, input_chunk
        loss = torch.sum(loss_1d)
        ctx.save_for_backward(grad_input.detach(), grad_weight, grad_bias)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:
        grad_input, grad_weight, grad_bias = ctx.saved_tensors
        # Liger scales its stored gradients in place (element_mul_kernel), or not at all for a 1.0.
        for grad in (grad_input, grad_weight, grad_bias):
            if grad is not None:
                grad.mul_(grad_output)
        return grad_input, grad_weight, None, grad_bias, None, None


def _cross_entropy_kernel(logits: torch.Tensor, target: torch.Tensor, loss_out: torch.Tensor,
                          n_valid: torch.Tensor, softcap: float | None) -> None:
    """What `liger_cross_entropy_kernel` does to one chunk: each row's loss into `loss_out`, and the
    gradient of the mean loss with respect to the logits written over `logits`, computed in fp32."""
    z = logits.float()  # the one fp32 block (the kernel holds a row in registers instead)
    if softcap is not None:
        z.div_(softcap).tanh_()
        logits.copy_(z)
        logits.mul_(logits).neg_().add_(1)  # d(cap·tanh(x/cap))/dx = 1 - tanh², kept in the logits' buffer
        z.mul_(softcap)
    valid = target != IGNORE
    safe = target.clamp(min=0)
    picked = z.gather(1, safe.unsqueeze(1)).squeeze(1)
    top = z.amax(dim=-1, keepdim=True)
    z.sub_(top).exp_()
    total = z.sum(dim=-1, keepdim=True)
    lse = total.log().add_(top).squeeze(1)
    loss_out.copy_(torch.where(valid, lse - picked, 0.0) / n_valid)
    z.div_(total)  # softmax
    z.scatter_add_(1, safe.unsqueeze(1), -valid.to(z.dtype).unsqueeze(1))  # minus the one-hot target
    z.mul_((valid.to(z.dtype) / n_valid).unsqueeze(1))  # mean over valid tokens; ignored rows get 0
    if softcap is not None:
        z.mul_(logits)
    logits.copy_(z)


def _liger(head: nn.Module, hidden_states: torch.Tensor, labels: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Liger's `lce_forward` / `LigerForCausalLMLoss`: shift the labels, flatten, fused loss."""
    shift = shifted_labels(labels)
    hidden = hidden_states.reshape(-1, hidden_states.size(-1))
    target = shift.view(-1)
    n_valid = (target != IGNORE).sum()
    return FusedLinearCrossEntropy.apply(hidden, head.weight, target, getattr(head, "bias", None), cap, n_valid)  # type: ignore[no-any-return]


def _config_value(model: Any, name: str) -> Any:
    config = getattr(model, "config", None)
    value = getattr(config, name, None)
    if value is None:
        text = getattr(config, "text_config", None)
        value = getattr(text, name, None)
    return value


def _reads_weight(head: nn.Module) -> None:
    """Refuse what TRL refuses: a loss that reads the output layer's weight itself cannot see an adapter
    on the output layer (or a packed 4-bit weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(head, BaseTunerLayer):
        raise UnsupportedError("the fused loss and TRL's chunked loss read the output layer's weight; "
                               "an adapted output layer cannot use them (remove lm_head from the targets)")
    if type(getattr(head, "weight", None)).__name__ in ("Params4bit", "Int8Params"):
        raise UnsupportedError("the fused loss and TRL's chunked loss read the output layer's weight, "
                               "which --kbit-prep all-linear quantizes; use --loss chunked without --loss-recompute")


def stack_loss(model: Any, ids: torch.Tensor, labels: torch.Tensor, batch: Batch, ctx: TrainContext,
               scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
               inputs: dict[str, Any] | None = None) -> tuple[torch.Tensor, Any]:
    """The loss of `ctx.loss` (with its sub-knobs) and what the loop keeps until backward is done.

    `full` with `loss_fp32` runs transformers' own loss inside the model (the caller's default path, not
    this function). Everything else runs the model with its output layer captured (`captured_hidden`)
    and applies the stack's loss to the last hidden state; `scope` tags what the loss allocates. `inputs`:
    the model's other inputs (a VLM's images).
    """
    head = model.get_output_embeddings()
    cap = _config_value(model, "final_logit_softcapping")
    if ctx.loss == "fused" or (ctx.loss == "chunked" and ctx.loss_recompute):
        _reads_weight(head)
    head_call = type(head).forward.__get__(head)  # the layer's own forward, outside its hooks
    with captured_hidden(head) as box:
        model(input_ids=ids, **(inputs or {}))  # the outputs (an empty logits view) are dropped at once
    hidden = box.pop("hidden")
    held: Any = None
    with scope():
        if ctx.loss == "fused":
            loss = _liger(head, hidden, labels, cap)
        elif ctx.loss == "chunked" and ctx.loss_recompute:
            loss = _trl(head, hidden, labels, batch, ctx, cap, _config_value(model, "logit_scale") or 1.0)
        elif ctx.loss == "chunked" and ctx.keep_logits:
            loss, held = _litgpt(head_call, hidden, labels, ctx, cap)
        elif ctx.loss == "chunked":
            loss = _torchtune(head_call, hidden, labels, ctx)
        else:
            if ctx.legacy_loss:
                loss, logits = _legacy(head_call, hidden, labels, cap)
            else:
                loss, logits = _full(head_call, hidden, labels, ctx, cap)
            held = logits if ctx.keep_logits else None
            del logits
    del hidden
    return loss, held
