"""One steady-state training step under the live-bytes tracker, cut into segments and categorised.

The step is what the harness's loop does: states already exist (`trace_optim.warm_up`; the method's own,
such as AdaLoRA's importance scores, from its hook run once on zero gradients), then
`loss = model(input_ids=..., labels=...).loss` (under autocast for 16-bit dtypes; the outputs object
is dropped at once, as a trainer keeps only the loss), `loss.backward()`, `optimizer.step()`, the
method's `after_optimizer_step`, `optimizer.zero_grad(set_to_none=True)`. It runs on fake tensors (the
trace) or real ones (the tests).

Segments: hooks mark where the step is, finer than the four phases, so that depth extrapolation
(`trace_extrapolate.py`) can tell the per-layer pattern from the rest:
`forward:pre`, `forward:layer:<i>`, `forward:post`, `loss` (from the output head on),
`backward:head` (until the gradient reaches the head's input), `backward:post`, `backward:layer:<i>`
(from the gradient of block i's output), `backward:pre`, `optimizer`.

Categories at each segment's peak: parameters by identity (`weights` of the base, packed bnb weights
included; `quant_constants`; `adapter` for what the method added), `gradients`, `optimizer` states (and
the method's `state_tensors`, kept between steps likewise);
everything else is transient and sorted by when it appeared: `logits` (output head, loss and their
backward), `activations` (made in the forward), `temporaries` (made in backward or optimizer step).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    from peftplan.methods.base import Method
    from peftplan.planner.context import TrainContext
    from peftplan.planner.livebytes import LiveBytes, Record
    from peftplan.planner.trace_stack import Batch

__all__ = ["CATEGORIES", "SegmentPeak", "StepTrace", "run_step"]

CATEGORIES = (
    "weights",
    "quant_constants",
    "adapter",
    "gradients",
    "optimizer",
    "activations",
    "temporaries",
    "logits",
)
_PEFT_PREFIX = re.compile(r"^base_model\.model\.")


@dataclass
class SegmentPeak:
    """Live bytes at one segment's peak, split by category, and the transient bytes by module."""

    total: int
    categories: dict[str, int]
    modules: dict[str, int] = field(default_factory=dict)


@dataclass
class StepTrace:
    """What one traced step held: the peak and each segment's peak (in the order they ran)."""

    depth: int
    peak: int
    segments: dict[str, SegmentPeak]
    layers_path: str = ""

    @property
    def peak_segment(self) -> str:
        return max(self.segments, key=lambda s: self.segments[s].total)


def _unique_trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    params = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def find_layers(model: nn.Module, depth: int) -> tuple[str, nn.ModuleList | None]:
    """The text stack: the shallowest ModuleList of `depth` blocks that is not a vision tower."""
    from torch import nn

    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == depth and name
    ]
    candidates.sort(key=lambda c: ("visual" in c[0] or "vision" in c[0], c[0].count(".")))
    return candidates[0] if candidates else ("", None)


def _first_tensor(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _module_tag(name: str) -> str:
    """A module's name without peft's wrapper prefix; "" for the wrappers and the root model."""
    return "" if name in ("", "base_model", "base_model.model") else _PEFT_PREFIX.sub("", name)


class _Instrument:
    """Module hooks that mark segments and tag new storages with the innermost running module."""

    def __init__(self, model: Any, lb: LiveBytes, layers: nn.ModuleList | None) -> None:
        self.lb = lb
        self.stage = "idle"
        self.stack: list[str] = []
        self.handles: list[Any] = []
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for name, module in model.named_modules():
            tag = _module_tag(name)
            self.handles.append(module.register_forward_pre_hook(self._push(tag)))
            self.handles.append(module.register_forward_hook(self._pop, always_call=True))
        if layers is not None:
            last = len(layers) - 1
            for index, layer in enumerate(layers):
                self.handles.append(
                    layer.register_forward_pre_hook(self._layer_start(index), with_kwargs=True)
                )
                self.handles.append(layer.register_forward_hook(self._layer_end(index, last)))
        if self.head is not None:
            self.handles.append(self.head.register_forward_pre_hook(self._head_start))

    def _push(self, tag: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self.stack.append(tag)
            self.lb.tag = tag

        return hook

    def _pop(self, module: Any, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()
        self.lb.tag = self.stack[-1] if self.stack else ""

    def _on_grad(self, segment: str) -> Any:
        def hook(grad: Any) -> None:
            self.lb.mark(segment)

        return hook

    def _watch(self, tensor: Any, segment: str) -> None:
        if tensor is not None and tensor.requires_grad:
            tensor.register_hook(self._on_grad(segment))

    def _layer_start(self, index: int) -> Any:
        def hook(module: Any, args: Any, kwargs: Any) -> None:
            if self.stage != "forward":
                return  # a checkpointed block recomputing during backward
            self.lb.mark(f"forward:layer:{index}")
            if index == 0:
                self._watch(_first_tensor(args) if args else kwargs.get("hidden_states"), "backward:pre")

        return hook

    def _layer_end(self, index: int, last: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            if self.stage != "forward":
                return
            self._watch(_first_tensor(output), f"backward:layer:{index}")
            if index == last:
                self.lb.mark("forward:post")

        return hook

    def _head_start(self, module: Any, args: Any) -> None:
        if self.stage != "forward":
            return
        self.lb.mark("loss")
        self._watch(_first_tensor(args), "backward:post")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _quant_constant_tensors(model: nn.Module) -> list[Any]:
    import torch

    tensors: list[Any] = []
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        while state is not None:
            tensors.extend(t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor))
            state = state.state2
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            tensors.append(scb)
    for module in model.modules():  # bnb int8 layers move CB/SCB into their matmul state
        scb = getattr(getattr(module, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            tensors.append(scb)
    return tensors


def _persistent_categories(model: nn.Module, optimizers: list[Any], held: list[Any]) -> dict[int, str]:
    """Storage id -> category for everything that outlives the step (read before zero_grad)."""
    from peftplan.planner.livebytes import storage_of
    from peftplan.planner.trace_build import BASE_MARK, attribute_tensors
    from peftplan.planner.trace_optim import optimizer_tensors
    from peftplan.planner.trace_quant import is_quantized_weight

    categories: dict[int, str] = {}

    def put(tensor: Any, category: str) -> None:
        storage = storage_of(tensor)
        if storage is not None:
            categories.setdefault(id(storage), category)

    for optimizer in optimizers:
        for t in optimizer_tensors(optimizer):
            put(t, "optimizer")
    for t in held:  # the method's state between steps: per-parameter training state, like the optimizer's
        put(t, "optimizer")
    for p in model.parameters():
        if p.grad is not None:
            put(p.grad, "gradients")
    for t in _quant_constant_tensors(model):
        put(t, "quant_constants")
    for p in model.parameters():
        put(p, "weights" if getattr(p, BASE_MARK, False) or is_quantized_weight(p) else "adapter")
    for b in [*model.buffers(), *attribute_tensors(model)]:
        put(b, "weights" if getattr(b, BASE_MARK, False) else "adapter")
    return categories


def _transient_category(record: Record) -> str:
    segment = record.phase
    if segment in ("loss", "backward:head"):
        return "logits"
    if segment.startswith("forward"):
        return "activations"
    return "temporaries"


def _segment_peak(records: list[Record], persistent: dict[int, str]) -> SegmentPeak:
    categories = dict.fromkeys(CATEGORIES, 0)
    modules: dict[str, int] = {}
    for record in records:
        storage = record.storage()
        category = persistent.get(id(storage)) if storage is not None else None
        category = category or record.category or None  # e.g. a gradient stepped and freed in backward
        if category is None:
            category = _transient_category(record)
            tag = record.tag or f"({record.phase.split(':')[0] or 'step'})"  # outside any block: the phase
            modules[tag] = modules.get(tag, 0) + record.nbytes
        categories[category] += record.nbytes
    return SegmentPeak(sum(categories.values()), categories, modules)


class _AdapterKeptTorch:
    """`torch` as seen by peft's LoHa/LoKr layers, except that the module-dropout draw `rand(1)` is 1.

    Those layers run `if torch.rand(1) > module_dropout` in training; a fake draw has no value. The
    answer "keep the adapter" is the only one with module_dropout 0, and the costlier one otherwise.
    The constant still allocates like the real draw.
    """

    def __getattr__(self, name: str) -> Any:
        import torch

        return getattr(torch, name)

    @staticmethod
    def rand(*size: Any, **kwargs: Any) -> Any:
        import torch

        if size == (1,) and not kwargs:
            return torch.tensor([1.0])
        return torch.rand(*size, **kwargs)


@contextmanager
def image_layout_answers() -> Iterator[None]:
    """Let an image step's layout keep its values on fake tensors, as the real step's does.

    Qwen2-VL reads its image layout's values (transformers 5.23 `vision_utils.py`: `get_vision_position_ids`
    iterates `grid_thw.tolist()`, `get_vision_cu_seqlens`; `modeling_qwen2_vl.py`: `VisionAttention.forward`
    splits each image by `lengths.tolist()`, `get_image_features` by the grid, `get_rope_index` groups
    `mm_token_type_ids.tolist()`). FakeTensorMode keeps the values of tensors made from Python data (a lift)
    and of ops on them (constant propagation), but only up to `CONSTANT_NUMEL_LIMIT` elements (1, torch 2.13
    `_subclasses/fake_tensor.py:85`, `may_turn_const`). Raised here, the layout (the grid, the token types
    `image_inputs` builds from lists) and what is computed from it alone keep their values, and the same ops
    run on fake tensors of the same sizes; everything else (weights, ids, pixels) has no constant and is
    unaffected. The values are small integer tensors: they are computed for real, beside the fake ones.

    Two questions the layout does not answer alone:
    - `get_placeholder_mask` checks that the random ids hold as many placeholders as the tower returns rows
      (`torch_compilable_check`, `modeling_qwen2_vl.py:1050-1060`). `image_inputs` builds the batch so that
      they do, and the real step checks it; on fake tensors the answer is that it holds.
    - `get_rope_index` (`:893-995`) builds each example's positions with `torch.arange` (no constant) and
      reads their `max()` into `torch.tensor(...)`. It runs for real on the layout's values, outside the
      tracked step, and the step gets what it returns made as it makes them: `position_ids`, a
      `torch.zeros(3, B, S)` of the ids' dtype filled in place, and the deltas, a `torch.tensor` of B
      integers `unsqueeze`d (kept on the model as `rope_deltas`). Its per-example rows (3 x S int64) are
      freed before it returns and are not replayed.
    """
    from unittest import mock

    import torch
    from torch._subclasses import fake_tensor
    from torch.utils._mode_utils import no_dispatch
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    check = modeling_qwen2_vl.torch_compilable_check
    rope_index = modeling_qwen2_vl.Qwen2VLModel.get_rope_index

    def holds_on_fake(cond: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(cond, fake_tensor.FakeTensor) and cond.constant is None:
            return
        check(cond, *args, **kwargs)

    def layout_rope_index(model: Any, input_ids: Any, mm_token_type_ids: Any, image_grid_thw: Any = None,
                          video_grid_thw: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        if not isinstance(input_ids, fake_tensor.FakeTensor):
            return rope_index(model, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw,
                              attention_mask, **kwargs)
        if video_grid_thw is not None or attention_mask is not None:
            raise RuntimeError("the traced image step has neither videos nor an attention mask")

        def real(t: Any) -> Any:
            if t is None or t.constant is None:
                raise RuntimeError("the image layout lost its values on fake tensors")
            return t.constant

        with no_dispatch():
            ids: Any = torch.zeros(input_ids.shape, dtype=input_ids.dtype)
            positions, deltas = rope_index(model, ids, real(mm_token_type_ids), real(image_grid_thw))
            values = deltas.flatten().tolist()
        out = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype)
        out.copy_(positions)
        return out, torch.tensor(values, device=input_ids.device).unsqueeze(1)

    with (
        mock.patch.object(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1 << 24),
        mock.patch.object(modeling_qwen2_vl, "torch_compilable_check", holds_on_fake),
        mock.patch.object(modeling_qwen2_vl.Qwen2VLModel, "get_rope_index", layout_rope_index),
    ):
        yield


@contextmanager
def _data_answers() -> Iterator[None]:
    """Answer the library code's data-dependent questions on fake inputs as the real step answers them.

    - transformers looks at the values of `position_ids` to detect packed sequences; on fake tensors
      it cannot, and assumes packing, which builds a dense mask and forces the math attention kernel.
      The traced batch is plain unpacked sequences, so the answer is "not packed" (the same ops run).
    - peft's LoHa/LoKr module-dropout draw (see `_AdapterKeptTorch`).
    """
    from unittest import mock

    from peft.tuners.loha import layer as loha_layer
    from peft.tuners.lokr import layer as lokr_layer
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices

    def not_packed(position_ids: Any) -> None:
        original(position_ids)
        return None

    kept = _AdapterKeptTorch()
    with (
        mock.patch.object(masking_utils, "find_packed_sequence_indices", not_packed),
        mock.patch.object(loha_layer, "torch", kept),
        mock.patch.object(lokr_layer, "torch", kept),
    ):
        yield


def _labels(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Labels for `ids`: the ids themselves, shifted by the model's loss as it does for training.

    Prompt tuning puts virtual tokens before the sequence. peft pads the labels itself for causal LMs;
    for other task types the training loop must, with -100 (ignored) for the virtual positions.
    """
    import torch

    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return ids
    if str(getattr(config, "task_type", "")).endswith("CAUSAL_LM") or "PREFIX" in str(config.peft_type):
        return ids
    pad = torch.full((ids.shape[0], config.num_virtual_tokens), -100, dtype=ids.dtype)
    return torch.cat([pad, ids], dim=1)


def image_inputs(model: Any, ctx: TrainContext, ids: torch.Tensor, generator: Any) -> dict[str, Any]:
    """A VLM step's image inputs, as Qwen2-VL's processor returns them; {} for a text step.

    Each example starts with its images' placeholder tokens (`image_token_id`, `mm_token_type_ids` 1), one text
    token after each; each image is a 2 x (patches / 2) grid of patches (one frame), its `pixel_values` rows
    fp32. The tower's memory depends on the patch count, not the grid's shape. `ids` is changed in place. The
    layout (`image_grid_thw`, `mm_token_type_ids`) is made from Python lists, so that on fake tensors it keeps its
    values (`image_layout_answers`).
    """
    import torch

    if not ctx.images:
        return {}
    config = model.config
    vc = config.vision_config
    merge = int(vc.spatial_merge_size)
    features = int(vc.in_channels) * int(vc.temporal_patch_size) * int(vc.patch_size) ** 2
    image_id = int(config.image_token_id)
    ids.masked_fill_(ids == image_id, 0)  # random text holds no placeholder
    row = [0] * ids.shape[1]
    for i in range(ctx.images):  # one text token after each image, as the processor's vision_end
        start = i * (ctx.image_tokens + 1)
        ids[:, start:start + ctx.image_tokens] = image_id
        row[start:start + ctx.image_tokens] = [1] * ctx.image_tokens
    types = torch.tensor([row] * ids.shape[0], dtype=torch.int)
    count = ids.shape[0] * ctx.images
    grid = torch.tensor([[1, merge, ctx.image_patches // merge]] * count, dtype=torch.long)
    pixels = torch.rand(count * ctx.image_patches, features, generator=generator)
    return {"pixel_values": pixels, "image_grid_thw": grid, "mm_token_type_ids": types}


def _host_tensors(optimizers: list[Any]) -> list[Any]:
    """torch keeps AdamW's per-parameter step counters on the host even on CUDA: not device memory."""
    return [state["step"] for optimizer in optimizers for state in optimizer.state.values()
            if getattr(state.get("step"), "ndim", 1) == 0]


def _batch_layout(model: nn.Module, ctx: TrainContext) -> Batch:
    """The batch's layout: prompt tuning's virtual tokens come first, their labels padded with -100."""
    from peftplan.planner.trace_stack import Batch

    config = getattr(model, "active_peft_config", None)
    padded = 0
    if config is not None and getattr(config, "is_prompt_learning", False) and "PREFIX" not in str(config.peft_type):
        padded = int(config.num_virtual_tokens)
    return Batch(rows=ctx.batch_size, length=padded + ctx.seq_len, padded=padded)


def _module_name(model: nn.Module, target: Any) -> str:
    for name, module in model.named_modules():
        if module is target:
            return _module_tag(name)
    return ""


@contextmanager
def _stack_techniques(model: Any, ctx: TrainContext, layers: nn.ModuleList | None, lb: LiveBytes) -> Iterator[Any]:
    """Install the checkpoint offloading and activation offloading of `ctx` for the step; yields the host."""
    from peftplan.planner.trace_stack import Host, offload_block_activations, offloaded_checkpoint

    host = Host(lb.uncounted)
    handles: list[Any] = []
    patched: list[tuple[Any, Any]] = []
    if ctx.ckpt_offload:
        function = offloaded_checkpoint(host)
        for module in model.modules():  # as Unsloth patches transformers' checkpoint function
            if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
                patched.append((module, module._gradient_checkpointing_func))
                module._gradient_checkpointing_func = function
    if ctx.offload_activations and layers is not None:
        handles = offload_block_activations(layers, host)
    try:
        yield host
    finally:
        for handle in handles:
            handle.remove()
        for module, original in patched:
            module._gradient_checkpointing_func = original


# The step index the method's hook sees. AdaLoRA's first step (within `tinit`) updates its scores but masks no
# rank: masking reads the scores' values, which fake tensors do not have, and allocates less than the update.
STATE_STEP = 0


def _warm_method_state(model: Any, params: list[Any], method: Method[Any]) -> None:
    """The method's hook once on zero gradients, as after a first step: what it keeps between steps exists."""
    import torch

    for p in params:
        p.grad = torch.zeros_like(p)
    method.after_optimizer_step(model, STATE_STEP)
    for p in params:
        p.grad = None


def run_step(
    model: Any,
    ctx: TrainContext,
    *,
    depth: int,
    fake_mode: FakeTensorMode | None = None,
    decompose_bnb: bool = False,
    granularity: int = 512,
    seed: int = 0,
    method: Method[Any] | None = None,
) -> StepTrace:
    """Run one steady-state step of `model` and return what it held at each segment's peak.

    `granularity` rounds each storage like the CUDA caching allocator (512 bytes). The stack's knobs
    (`ctx.loss`, checkpoint and activation offloading, the optimizer inside backward) run as
    `trace_stack.py` writes them; precision and k-bit preparation are the model's (`trace_build.py`).
    `method`'s `after_optimizer_step` runs after the optimizer step (and once before, for its state).

    Raises:
        BadInputError: the model has nothing to train.
        UnsupportedError: a loss that reads the output layer's weight on an adapted or packed one.
    """
    import torch

    from peftplan.planner.livebytes import LiveBytes
    from peftplan.planner.trace_build import attribute_tensors, torch_dtype
    from peftplan.planner.trace_optim import build_optimizer, optimizer_tensors, warm_up
    from peftplan.planner.trace_quant import DecomposeGemm4bit
    from peftplan.planner.trace_stack import stack_loss, step_in_backward

    trainable = _unique_trainable(model)
    if not trainable:
        raise BadInputError("the method left nothing to train")
    # Outside fake mode: bnb builds real code maps. In backward, torchtune has one optimizer per parameter.
    if ctx.optimizer_in_bwd:
        per_param = {p: build_optimizer(ctx.optimizer, [p], fused=ctx.optimizer_fused) for p in trainable}
        optimizers = list(per_param.values())
    else:
        optimizers = [build_optimizer(ctx.optimizer, trainable, fused=ctx.optimizer_fused)]
    layers_path, layers = find_layers(model, depth)
    vocab = int(model.get_input_embeddings().num_embeddings)
    batch = _batch_layout(model, ctx)
    # transformers' own loss, inside the model, unless a stack's loss replaces it (trace_stack.stack_loss).
    own_loss = ctx.loss == "full" and ctx.loss_fp32 and not ctx.legacy_loss
    autocast: Any = torch.autocast("cpu", dtype=torch_dtype(ctx.dtype)) if ctx.autocast else nullcontext()
    with fake_mode if fake_mode is not None else nullcontext():
        if ctx.optimizer_in_bwd:
            for p, optimizer in per_param.items():
                warm_up(optimizer, [p])
        else:
            warm_up(optimizers[0], trainable)
        if method is not None:
            _warm_method_state(model, trainable, method)
        held_state = method.state_tensors(model) if method is not None else []
        lb = LiveBytes(granularity=granularity, snapshot_peak=True)
        lb.ignore(_host_tensors(optimizers))
        lb.track_module(model)
        lb.track(attribute_tensors(model))
        lb.track(_quant_constant_tensors(model))  # bnb keeps them in QuantState objects, not as parameters
        for optimizer in optimizers:
            lb.track(optimizer_tensors(optimizer))
        lb.track(held_state)
        lb.categorize(held_state, "optimizer")  # replaced by new tensors when the hook runs again
        del held_state
        instrument = _Instrument(model, lb, layers)
        head_tag = _module_name(model, instrument.head)
        decompose = DecomposeGemm4bit() if decompose_bnb else None
        generator = torch.Generator().manual_seed(seed) if fake_mode is None else None
        hooks: list[Any] = []
        if ctx.optimizer_in_bwd:
            hooks = step_in_backward(per_param, lambda p: lb.categorize([p.grad], "gradients"))
        try:
            with ExitStack() as stack:
                if fake_mode is not None:
                    stack.enter_context(_data_answers())  # imports first: module constants are not the step's
                    if ctx.images:
                        stack.enter_context(image_layout_answers())
                stack.enter_context(lb)
                if decompose is not None:
                    stack.enter_context(decompose)
                stack.enter_context(_stack_techniques(model, ctx, layers, lb))
                lb.mark("forward:pre")
                instrument.stage = "forward"
                ids = torch.randint(vocab, (ctx.batch_size, ctx.seq_len), generator=generator)
                images = image_inputs(model, ctx, ids, generator)  # held with ids, as the loop holds its batch
                held: Any = None
                with autocast:
                    if own_loss:
                        labels = _labels(model, ids)
                        outputs = model(input_ids=ids, labels=labels, **images)
                        loss = outputs.loss
                        held = outputs.logits if ctx.keep_logits else None  # the loop's `logits`
                        del outputs  # a trainer keeps only the loss
                    else:
                        labels = batch.labels(ids)
                        loss, held = stack_loss(model, ids, labels, batch, ctx, lambda: lb.scope(head_tag), images)
                instrument.stage = "backward"
                lb.mark("backward:head")
                loss.backward()
                del loss
                instrument.stage = "optimizer"
                lb.mark("optimizer")
                if not ctx.optimizer_in_bwd:
                    optimizers[0].step()
                    if method is not None:
                        method.after_optimizer_step(model, STATE_STEP)
                # The loop's batch (a trainer's `inputs`, the harness's `batch`) and litgpt's loop variable
                # `logits` live until the step is over.
                del held, ids, labels, images
                # Categorise now: gradients are still alive, and every segment's peak is behind us.
                persistent = _persistent_categories(
                    model, optimizers, method.state_tensors(model) if method is not None else [])
                segments = {
                    name: _segment_peak(records, persistent) for name, records in lb.phase_records.items()
                }
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
        finally:
            instrument.remove()
            for hook in hooks:
                hook.remove()
    return StepTrace(
        depth=depth, peak=lb.peak, segments=segments, layers_path=_PEFT_PREFIX.sub("", layers_path)
    )
