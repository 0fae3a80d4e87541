"""The analytic memory model: one steady-state training step's peak, as a MemoryBreakdown.

Moments, as `peak_moment` names them: forward, head-fwd, loss, loss-bwd, head-bwd, block-bwd, bwd-end,
optimizer, recompute.

The step is the second or later one (optimizer states exist; gradients were released with
`zero_grad(set_to_none=True)`): forward with the loss inside the model, `loss.backward()`,
`optimizer.step()`. Its peak is the largest of a few moments, each priced exactly:
- the loss backward: every saved activation plus the fp32 log-softmax output and two fp32
  gradients of the logits (usually the peak: vocabulary x tokens x 12 bytes);
- the end of the forward (logits, their fp32 copy, KV caches of prefix tuning; with checkpointed blocks,
  autocast's cached weight copies), and the output layer's last matmul (a 4-bit head's dequantized weight
  beside the logits);
- each moment of a loss whose largest one depends on the shape (TRL's checkpointed chunks), forward
  and backward;
- with `bnb_keeps_input` and a loop that keeps the logits (litgpt), the previous step's kept 4-bit inputs
  and logits beside this step's forward;
- transient moments of the forward (a dequantized 4-bit weight, DoRA's weight norm);
- the end of the backward (all gradients, plus the tied-embedding gradient sum);
- the optimizer step (gradients plus the step's temporaries);
- state a method keeps between steps beside the optimizer (AdaLoRA's importance scores) is alive
  throughout, on the optimizer line; gradients of the tensors a method's loss term reads (AdaLoRA's
  orthogonal regularisation) exist from the start of backward, since that term's backward runs first;
- with checkpointing, the recomputation of a block during backward: the last block (every
  checkpoint still held) or the first (the other blocks' gradients already made).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftplan.methods.base import Method, MethodConfig
from peftplan.models.spec import ModelSpec
from peftplan.planner.activations import ActivationProfile, base_itemsize
from peftplan.planner.context import DTYPE_BYTES, MemoryBreakdown, TrainContext
from peftplan.planner.optimizers import OptimizerBytes, optimizer_bytes
from peftplan.planner.vision import step_activations
from peftplan.planner.weights import UnitBytes, WeightBytes, unit_bytes, weight_bytes
from peftplan.replay.symbolic import Poly
from peftplan.replay.terms import MemoryTerms, Shape, numel

MIB = 1 << 20
GIB = 1 << 30
# DeepSpeed ZeRO's reduce bucket: `reduce_bucket_size` (default 5e8, deepspeed/runtime/zero/config.py l.105
# @microsoft/DeepSpeed@5115df3f0, v0.13.4; l.109 @38327e07f) elements of the model dtype. ZeRO-3 allocates it
# when the optimizer is built (`__ipg_bucket_flat_buffer`, stage3.py l.489-492, with `contiguous_gradients`,
# default True, config.py l.94) and keeps it for the whole run; ZeRO-2 for each backward. accelerate's generated config (utils/dataclasses.py l.688-706 @v0.27.2) and
# transformers' Trainer leave the size at DeepSpeed's default.
ZERO_REDUCE_BUCKET = 500_000_000
ZERO3_SUB_GROUP = 1_000_000_000  # ZeRO-3's `sub_group_size` (elements the optimizer steps at a time), config.py l.168
# The moments inside `loss.backward()` (ZeRO-2's reduce bucket exists only there).
BACKWARD = frozenset({"recompute", "block-bwd", "loss-bwd", "head-bwd", "bwd-end", "vision-bwd"})
CUDA_CONTEXT = 512 * MIB  # CUDA context, cuBLAS/cuDNN handles and workspaces (measured 0.4-0.6 GiB)
ALLOCATOR_BLOCK = 2 * MIB  # the caching allocator reserves in 2 MiB blocks (20 MiB for large ones)
FRAGMENTATION = 0.05  # reserved beyond allocated at the peak, from measured reserved/allocated ratios


@dataclass(frozen=True)
class StepModel:
    """What one (method, config, context-without-batch/seq) costs: fixed bytes and activation polynomials.

    Build it once with `step_model`, then price any batch size and sequence length with `breakdown`.
    """

    spec: ModelSpec
    terms: MemoryTerms
    ctx: TrainContext
    weights: WeightBytes
    optimizer: OptimizerBytes
    gradients: int
    activations: ActivationProfile
    lm_head_grad: int
    tied_spike: int
    later_block_gradients: int = 0  # gradients of every block but the first (alive at its backward)
    largest_gradient: int = 0  # the largest single trainable tensor's gradient
    method_state: int = 0  # bytes the method keeps between steps beside the optimizer (`MemoryTerms.method_state`)
    early_gradients: int = 0  # gradients made before the model's backward (`MemoryTerms.loss_terms`)
    early_later_gradients: int = 0  # the part of them in blocks 1..L-1 (already in `later_block_gradients`)
    units: UnitBytes | None = None  # FSDP/ZeRO units (only with several GPUs and sharding)
    trainable_numel: int = 0  # elements of every trainable tensor

    @property
    def shards(self) -> int:
        return self.ctx.gpus if self.ctx.sharded else 1

    def breakdown(self, batch: int, seq: int) -> MemoryBreakdown:
        """The per-GPU MemoryBreakdown at micro-batch `batch` and sequence length `seq`."""
        return breakdown(self, batch, seq)


def named_trainable_tensors(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> list[tuple[str, Shape, int]]:
    """(owner, shape, itemsize) of every trainable tensor: the method's adapters (fp32, owned by the Linear
    they adapt or named by the method) and the base parameters that train."""
    master = ctx.optimizer == "adamw-fp32"
    base_size = 4 if master else base_itemsize(terms, ctx)
    size = ctx.adapter_itemsize
    tensors = [(name, shape, size) for name, adapter in terms.linear_adapters.items() for shape in adapter.tensors]
    tensors += [(name, shape, size) for name, adapter in terms.param_adapters.items() for shape in adapter.tensors]
    tensors += [(name, shape, size) for name, shape in zip(terms.extra_names, terms.extra_tensors, strict=True)]
    if terms.trainable_base != "none":
        biases_only = terms.trainable_base == "biases"
        tensors += [(p.name, p.shape, base_size) for p in spec.params
                    if p.tied_to is None and (not biases_only or p.name.rsplit(".", 1)[-1] == "bias")
                    and not spec.is_frozen(p.name)]
    return tensors


def trainable_tensors(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> list[tuple[Shape, int]]:
    """(shape, itemsize) of every trainable tensor (what optimizers and gradients are priced on)."""
    return [(shape, size) for _, shape, size in named_trainable_tensors(spec, terms, ctx)]


def later_block_gradients(spec: ModelSpec, tensors: list[tuple[str, Shape, int]]) -> int:
    """Gradient bytes of the trainable `tensors` (`named_trainable_tensors`) in blocks 1..L-1 (the first
    block's backward sees them)."""
    blocks, first = f"{spec.layers_path}.", f"{spec.layers_path}.0."
    return sum(numel(shape) * size for name, shape, size in tensors
               if name.startswith(blocks) and not name.startswith(first))


def loss_term_gradients(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> tuple[int, int]:
    """Gradient bytes of the adapter tensors a method's loss term reads (`MemoryTerms.loss_terms`): all of
    them, and those in blocks 1..L-1. The term joins the loss the model computes from its labels, so it runs
    where the traced step passes labels to the model (transformers' own fp32 loss); with the optimizer
    stepping inside backward, each gradient is freed as soon as it is made."""
    model_loss = ctx.loss == "full" and ctx.loss_fp32 and not ctx.legacy_loss  # as `trace_step.run_step`
    if not terms.loss_terms or not model_loss or ctx.optimizer_in_bwd:
        return 0, 0
    blocks, first = f"{spec.layers_path}.", f"{spec.layers_path}.0."
    total = later = 0
    for name, adapter in terms.linear_adapters.items():
        for suffix, shape in zip(adapter.names, adapter.tensors, strict=True):
            if suffix in terms.loss_terms:
                nbytes = numel(shape) * ctx.adapter_itemsize
                total += nbytes
                later += nbytes if name.startswith(blocks) and not name.startswith(first) else 0
    return total, later


def step_model(spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext) -> StepModel:
    """Everything about one step that does not depend on batch size or sequence length."""
    terms = method.memory_terms(spec, cfg)
    return step_model_from_terms(spec, terms, ctx)


def step_model_from_terms(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> StepModel:
    named = named_trainable_tensors(spec, terms, ctx)
    tensors = [(shape, size) for _, shape, size in named]
    numels = [numel(shape) for shape, _ in tensors]
    gradient_bytes = [n * size for n, (_, size) in zip(numels, tensors, strict=True)]
    gradients = sum(gradient_bytes)
    lm_head_grad = 0
    tied_spike = 0
    if terms.trainable_base == "all":
        size = 4 if ctx.optimizer == "adamw-fp32" else DTYPE_BYTES[ctx.dtype]
        vocab_rows = spec.vocab_size * spec.hidden_size * size
        lm_head_grad = vocab_rows
        # The tied matrix receives two gradients (LM head, then embedding); their sum is a third copy.
        tied_spike = 2 * vocab_rows if spec.tie_word_embeddings else 0
    early, early_later = loss_term_gradients(spec, terms, ctx)
    weights = weight_bytes(spec, terms, ctx)
    return StepModel(
        spec=spec,
        terms=terms,
        ctx=ctx,
        weights=weights,
        optimizer=context_optimizer_bytes(tensors, ctx),
        gradients=gradients,
        activations=step_activations(spec, terms, ctx),
        lm_head_grad=lm_head_grad,
        tied_spike=tied_spike,
        later_block_gradients=later_block_gradients(spec, named),
        largest_gradient=max(gradient_bytes, default=0),
        method_state=terms.method_state * ctx.adapter_itemsize,
        early_gradients=early,
        early_later_gradients=early_later,
        units=sharded_units(spec, terms, ctx, weights.weights),
        trainable_numel=sum(numels),
    )


def context_optimizer_bytes(tensors: list[tuple[Shape, int]], ctx: TrainContext) -> OptimizerBytes:
    """`ctx`'s optimizer over the trainable `tensors`. ZeRO's optimizer steps fp32 partitions of them
    (`param_group['params']` replaced, deepspeed/runtime/zero/stage_1_and_2.py l.416, stage3.py l.941
    @38327e07f): fp32 states whatever their dtype."""
    stepped = [(shape, 4) for shape, _ in tensors] if ctx.deepspeed else tensors
    return optimizer_bytes(ctx.optimizer, stepped, fused=ctx.optimizer_fused)


def sharded_units(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext, weights: int) -> UnitBytes | None:
    """The sharding units' stored bytes when `ctx` shards over GPUs (FSDP, ZeRO), else None."""
    if ctx.gpus <= 1 or ctx.shard == "none":
        return None
    names = [name for name, _, _ in named_trainable_tensors(spec, terms, ctx)]
    return unit_bytes(spec, terms, ctx, weights, names)


@dataclass(frozen=True)
class _Moment:
    name: str
    activations: int
    logits: int
    gradients: int
    optimizer_extra: int


def _moments(m: StepModel, batch: int, seq: int) -> list[_Moment]:
    act = m.activations
    ctx = m.ctx
    at = _at(batch, seq)
    logits_saved = at(act.logits_saved)
    loss_backward = at(act.loss_backward)
    # With the optimizer stepping inside backward, each gradient is freed once stepped: at most the
    # largest one exists, and the later blocks' gradients are gone when the first block runs backward.
    in_bwd = ctx.optimizer_in_bwd
    head_grad = min(m.lm_head_grad, m.largest_gradient) if in_bwd else m.lm_head_grad
    later_grads = 0 if in_bwd else m.later_block_gradients
    # A method's loss term runs its backward first: those gradients exist before the model's backward starts.
    early = m.early_gradients
    first_early = early - m.early_later_gradients  # what the first block's adds to the later blocks' gradients
    held = at(act.held_logits)  # litgpt's loop keeps `logits` through backward and the optimizer step
    # 4-bit Linears' inputs bitsandbytes < 0.43.2 keeps (`bnb_keeps_input`) live as long as the graph: through
    # backward, and when the loop keeps the step's logits (litgpt), beside the next step's forward with them.
    kept = at(act.ckpt_kept_inputs if ctx.grad_checkpointing else act.kept_inputs)
    previous = kept + held if (ctx.keep_logits and kept) else 0
    masks = 0
    if ctx.grad_checkpointing:
        masks = at(act.ckpt_masks)  # held by the checkpoints until the first block's backward
        saved = at(act.ckpt_saved) + masks
        offloaded = at(act.ckpt_inputs) if (ctx.ckpt_offload or ctx.offload_activations) else 0
        one_input = at(act.ckpt_inputs) - at(act.ckpt_later_inputs)  # one block's input
        saved -= offloaded
        in_blocks = saved - at(act.head_saved)
        # A block's backward: its recomputed activations, or a transient of its recomputed forward.
        rebuilt = max(max(cost.rebuilt(at) for cost in act.blocks),
                      max((at(p) for p in act.recompute_moments), default=0))
        recompute = rebuilt + at(act.grad_stream)
        if offloaded:
            # Block inputs live on the host; the one being recomputed is copied back first.
            last_block = first_block = in_blocks + one_input + recompute
            forward = max((at(p) for p in act.ckpt_moments), default=0) - at(act.ckpt_later_inputs)
        else:
            # The last block runs on top of every checkpoint; the first on top of the later blocks' gradients.
            last_block = in_blocks + recompute
            first_block = in_blocks - at(act.ckpt_later_inputs) + recompute
            forward = max((at(p) for p in act.ckpt_moments), default=0)
        moments = [_Moment("recompute", last_block + held, 0, head_grad + early, 0),
                   _Moment("recompute", first_block + held, 0, head_grad + later_grads + first_early, 0),
                   _Moment("forward", forward + previous, 0, 0, 0)]
    else:
        saved = at(act.saved)
        offloaded = at(act.blocks_saved) if ctx.offload_activations else 0
        saved -= offloaded
        if offloaded:
            # Each block's saved tensors come back from the host for its backward.
            forward = max((at(p) for p in act.recompute_moments), default=0) + saved - at(act.head_saved)
            # The block's saved tensors and its gradient temporaries.
            block_bwd = saved - at(act.head_saved) + max(at(c.saved) + c.temporaries(at) for c in act.blocks)
        else:
            forward = max((at(p) for p in act.moments), default=0)
            block_bwd = saved - at(act.head_saved) + max(c.temporaries(at) for c in act.blocks)
        moments = [_Moment("forward", forward + previous, 0, 0, 0),
                   _Moment("block-bwd", block_bwd + at(act.grad_stream) + held, 0, head_grad + early, 0)]
    # With checkpointed blocks, autocast's cached weight copies are alive until the forward ends, unsaved
    # (none without autocast: pure precision, DeepSpeed).
    cached = at(act.ckpt_cast_cache) if ctx.grad_checkpointing else 0
    forward_end = saved + at(act.forward_extra) + cached - masks  # `forward_extra` has the masks
    # A tied matrix's two gradients (output layer, then embedding) are summed by autograd before its
    # post-accumulate hook steps it, so the spike stays with the optimizer in backward.
    end_grads = (m.largest_gradient if in_bwd else m.gradients) + m.tied_spike
    moments += [
        _Moment("loss", forward_end, logits_saved, 0, 0),
        _Moment("loss-bwd", saved, logits_saved + loss_backward, early, 0),
        _Moment("head-bwd", saved + at(act.grad_stream), loss_backward // 2, head_grad + early, 0),
        _Moment("bwd-end", at(act.batch) + at(act.grad_stream) + held + kept, 0, end_grads, 0),
        # A VLM's vision tower runs its backward last but before the token embedding's (it ran after it in the
        # forward): an untied embedding table's gradient does not exist yet (planner/vision.py).
        _Moment("vision-bwd", at(act.batch) + at(act.grad_stream) + held + kept
                + at(act.ckpt_vision_backward if ctx.grad_checkpointing else act.vision_backward), 0,
                end_grads - (0 if in_bwd or m.spec.tie_word_embeddings else m.lm_head_grad), 0),
        _Moment("head-bwd", saved, at(act.head_backward), head_grad + early, 0),  # a 4-bit output layer's backward
        _Moment("head-fwd", saved + previous + cached, at(act.head_forward), 0, 0),  # the output layer's last matmul
    ]
    # A loss whose peak moves with the shape (TRL's chunks): each candidate moment of its forward and backward.
    moments += [_Moment("loss", saved + cached + at(extra) - masks, logits_saved, 0, 0)
                for extra in act.loss_forward_moments]
    moments += [_Moment("loss-bwd", saved, logits_saved + at(extra), early, 0) for extra in act.loss_backward_moments]
    if not in_bwd:
        graph = kept if ctx.keep_logits else 0  # a trainer drops the loss (and the graph) before its step
        moments.append(_Moment("optimizer", at(act.batch) + held + graph, 0, m.gradients, m.optimizer.step_temporary))
    return moments


def host_bytes(m: StepModel, batch: int, seq: int) -> int:
    """Bytes offloading keeps in host RAM at the peak: activations, and sharded states with --cpu-offload."""
    act, ctx = m.activations, m.ctx
    host = 0
    if ctx.grad_checkpointing and (ctx.ckpt_offload or ctx.offload_activations):
        host += act.ckpt_inputs.at(batch, seq)
    elif not ctx.grad_checkpointing and ctx.offload_activations:
        host += act.blocks_saved.at(batch, seq)
    return host


def _at(batch: int, seq: int):  # type: ignore[no-untyped-def]
    def evaluate(p: Poly) -> int:
        return p.at(batch, seq)

    return evaluate


def breakdown(m: StepModel, batch: int, seq: int) -> MemoryBreakdown:
    """Price `m` at (batch, seq): the peak moment's components, reserved, overhead and total."""
    return price(m, batch, seq)[0]


def price(m: StepModel, batch: int, seq: int) -> tuple[MemoryBreakdown, str]:
    """The per-GPU MemoryBreakdown at (batch, seq) and the name of the moment that peaks.

    FSDP and ZeRO-3 shard parameters, gradients and optimizer states; ZeRO-2 gradients and states.
    With `cpu_offload` the sharded states (and FSDP/ZeRO-3's parameters) live on the host. Paged
    optimizer states live in unified memory, outside `max_memory_allocated`: the `paged` line.
    """
    ctx = m.ctx
    shards = m.shards
    state_shards = ctx.gpus if ctx.shard in ("fsdp", "zero2", "zero3") and ctx.gpus > 1 else 1
    fsdp = ctx.shard == "fsdp" and ctx.gpus > 1
    zero3 = ctx.shard == "zero3"
    host = host_bytes(m, batch, seq)
    weights = m.weights.weights // shards
    # bitsandbytes keeps a 4-bit weight's constants (`quant_state`: absmax, code) as a plain attribute, not a
    # Parameter (bitsandbytes/nn/modules.py `Params4bit.quant_state`, restored from `Linear4bit.quant_state`
    # by `fix_4bit_weight_quant_state_from_module` for FSDP, 0.43.0): FSDP flattens and ZeRO-3 partitions
    # Parameters only, so every GPU holds all of them. torchao's NF4Tensor (torchtune) is sharded whole by FSDP2.
    constant_shards = shards if ctx.kbit_prep == "torchtune" else 1
    constants = m.weights.quant_constants // constant_shards
    adapter = m.weights.adapter // shards
    if ctx.cpu_offload and shards > 1:
        moved = constants if constant_shards > 1 else 0
        host += weights + moved + adapter
        weights = adapter = 0
        constants -= moved
    if shards > 1 and m.units is not None:
        # The current unit and the prefetched next one, all-gathered for compute (FSDP's backward prefetch,
        # ZeRO-3's prefetch bucket).
        weights += 2 * m.units.block
        if fsdp and ctx.fsdp_root_whole:
            # FSDP1 never frees the root unit's gathered parameters after forward (they are used again at
            # once in backward): torch/distributed/fsdp/_runtime_utils.py `_post_forward_reshard`,
            # `free_unsharded_flat_param = not state._is_root and ...` (torch 2.1-2.13). Embeddings and the output
            # layer stay whole from forward to backward (`fsdp_root_whole`).
            weights += m.units.root
    states = m.optimizer.states // state_shards
    paged = 0
    if ctx.optimizer.startswith("paged-"):
        paged, states = states, 0
    elif ctx.cpu_offload:
        host, states = host + states, 0
    states += m.method_state // shards  # sized as the (sharded) parameters it scores; never paged or offloaded
    grad_num, grad_den = 1, state_shards  # a moment's gradients, as the sharded share of this GPU
    held = 0  # gradient buffers alive at every moment
    in_backward = 0  # gradient buffers alive during backward only
    step_grads: tuple[int, int] | None = None  # ZeRO's step, per GPU: (at the fp32 cast, during AdamW)
    if fsdp and m.units is not None:
        # `fsdp_flat_grads`: the gradient of every unit with a trainable tensor spans the unit's FlatParameter.
        grads = m.units.trained if ctx.fsdp_flat_grads else m.gradients
        if ctx.fsdp_no_sync:
            # Under `no_sync()` `_post_backward_hook` returns before the reduce-scatter and the unsharded
            # gradient accumulates across micro-batches (torch/distributed/fsdp/_runtime_utils.py,
            # `if not state._sync_gradients`): whole on every GPU, from the previous micro-batch on.
            held, grad_num, grad_den = grads, 0, 1
        else:
            grad_num, grad_den = grads, max(m.gradients, 1) * state_shards
    elif ctx.deepspeed:
        itemsize = DTYPE_BYTES[ctx.dtype]
        # The fp32 partitions of the trainable parameters the optimizer steps (ZeRO-3
        # `fp32_partitioned_groups_flat`, stage3.py l.857-863 @5115df3f0; ZeRO-2 `single_partition_of_fp32_groups`,
        # stage_1_and_2.py l.398-409 @38327e07f). With offload_optimizer they live pinned on the host.
        master = m.trainable_numel * 4 // ctx.gpus
        if ctx.cpu_offload:
            host += master
        else:
            states += master
        if zero3:
            # The reduce bucket; the flat buffer of this GPU's gradient partitions (`grad_partitions_flat_buffer`,
            # stage3.py l.499-501 @5115df3f0: zeros at init, in the engine's gradient-accumulation dtype, the
            # model dtype under ZeRO, engine.py l.891-906). Gradients live in these buffers, not beside them.
            partitions = m.trainable_numel * itemsize // ctx.gpus
            held = ZERO_REDUCE_BUCKET * itemsize
            if ctx.cpu_offload:
                host += partitions
            else:
                held += partitions
            grad_num = 0
            if not ctx.cpu_offload:
                # Its step casts each sub-group of the partition (`sub_group_size`, 1e9 elements, config.py
                # l.168) to fp32: `flatten(averaged_gradients[i]).to(fp32)` (`_prepare_fp32_grad_for_sub_group`,
                # stage3.py l.1895-1899 @38327e07f), a flat 16-bit copy of views into the buffer above and the
                # fp32 gradient at once; AdamW then steps on the fp32 gradient.
                group = min(m.trainable_numel // ctx.gpus, ZERO3_SUB_GROUP)
                step_grads = (group * (itemsize + _fp32_copy(itemsize)), group * 4)
        else:
            # ZeRO-2 allocates its reduce bucket (`ipg_buffer`, `reduce_bucket_size` elements of the model dtype,
            # contiguous_gradients on by default) when backward starts and releases it at the end of backward
            # (stage_1_and_2.py `backward` l.2048-2053, `_release_ipg_buffers` l.676-680, l.802 @38327e07f).
            in_backward = ZERO_REDUCE_BUCKET * itemsize
            if not ctx.cpu_offload:
                # Its step casts each group's gradient partition to fp32 for the optimizer:
                # `flatten(averaged_gradients[i]).to(fp32)` (l.1891-1897) holds the 16-bit partition, its flat
                # copy and the fp32 gradient at once; AdamW then steps on the fp32 gradient.
                part = m.trainable_numel // ctx.gpus
                step_grads = (part * (2 * itemsize + _fp32_copy(itemsize)), part * 4)
    best: _Moment | None = None
    best_total = -1
    best_grads = best_extra = 0
    for moment in _moments(m, batch, seq):
        grads = moment.gradients * grad_num // grad_den + (in_backward if moment.name in BACKWARD else 0)
        extra = moment.optimizer_extra // state_shards
        if moment.name == "optimizer" and step_grads is not None:
            cast, fp32 = step_grads  # the fp32 cast, then AdamW on the fp32 gradient
            grads, extra = max((cast, 0), (fp32, extra), key=sum)
        total = moment.activations + moment.logits + grads + extra
        if total > best_total:
            best, best_total, best_grads, best_extra = moment, total, grads, extra
    assert best is not None
    buckets = ddp_bucket_bytes(m)
    peak = weights + constants + adapter + states + best_total + held + buckets
    reserved = reserved_for(peak)
    overhead = CUDA_CONTEXT
    result = MemoryBreakdown(
        weights=weights,
        quant_constants=constants,
        adapter=adapter,
        gradients=best_grads + held + buckets,
        optimizer=states + best_extra,
        activations=best.activations,
        logits=best.logits,
        overhead=overhead,
        peak_allocated=peak,
        reserved=reserved,
        total=reserved + overhead,
        paged=paged,
        host=host,
    )
    return result, best.name


def _fp32_copy(itemsize: int) -> int:
    """Bytes per element `.to(torch.float32)` allocates: none when the tensor is fp32 already."""
    return 4 if itemsize < 4 else 0


def ddp_bucket_bytes(m: StepModel) -> int:
    """DDP (several GPUs, no sharding) keeps a flat copy of every gradient in its all-reduce buckets,
    allocated when the model is wrapped and alive all step (`gradient_as_bucket_view=False`, the default)."""
    return m.gradients if m.ctx.gpus > 1 and m.ctx.shard == "none" else 0


def reserved_for(peak: int) -> int:
    """The caching allocator's reserve at the peak: fragmentation slack, in whole 2 MiB blocks."""
    reserved = int(peak * (1 + FRAGMENTATION))
    return -(-reserved // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK


def estimate_memory(spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext) -> MemoryBreakdown:
    """The MemoryBreakdown of one steady-state step of `method` on `spec` under `ctx`."""
    return step_model(spec, method, cfg, ctx).breakdown(ctx.batch_size, ctx.seq_len)
