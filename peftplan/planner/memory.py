"""The analytic memory model: one steady-state training step's peak, as a MemoryBreakdown.

Moments, as `peak_moment` names them: forward, loss, loss-bwd, head-bwd, block-bwd, bwd-end, optimizer,
recompute.

The step is the second or later one (optimizer states exist; gradients were released with
`zero_grad(set_to_none=True)`): forward with the loss inside the model, `loss.backward()`,
`optimizer.step()`. Its peak is the largest of a few moments, each priced exactly:
- the loss backward: every saved activation plus the fp32 log-softmax output and two fp32
  gradients of the logits (usually the peak: vocabulary x tokens x 12 bytes);
- the end of the forward (logits, their fp32 copy, KV caches of prefix tuning);
- transient moments of the forward (a dequantized 4-bit weight, DoRA's weight norm);
- the end of the backward (all gradients, plus the tied-embedding gradient sum);
- the optimizer step (gradients plus the step's temporaries);
- with checkpointing, the recomputation of a block during backward: the last block (every
  checkpoint still held) or the first (the other blocks' gradients already made).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftplan.methods.base import Method, MethodConfig
from peftplan.methods.memory import MemoryTerms, Shape
from peftplan.models.spec import ModelSpec
from peftplan.planner.activations import ActivationProfile, activation_profile
from peftplan.planner.context import DTYPE_BYTES, MemoryBreakdown, TrainContext
from peftplan.planner.optimizers import OptimizerBytes, optimizer_bytes
from peftplan.planner.symbolic import Poly
from peftplan.planner.weights import WeightBytes, weight_bytes

MIB = 1 << 20
GIB = 1 << 30
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

    @property
    def shards(self) -> int:
        return self.ctx.gpus if self.ctx.shard == "fsdp" else 1

    def breakdown(self, batch: int, seq: int) -> MemoryBreakdown:
        """The per-GPU MemoryBreakdown at micro-batch `batch` and sequence length `seq`."""
        return breakdown(self, batch, seq)


def named_trainable_tensors(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> list[tuple[str, Shape, int]]:
    """(owner, shape, itemsize) of every trainable tensor: the method's adapters (fp32, owned by the Linear
    they adapt or named by the method) and the base parameters that train."""
    master = ctx.optimizer == "adamw-fp32"
    base_size = 4 if (master or terms.quant != "none") else DTYPE_BYTES[ctx.dtype]
    tensors = [(name, shape, 4) for name, adapter in terms.linear_adapters.items() for shape in adapter.tensors]
    tensors += [(name, shape, 4) for name, shape in zip(terms.extra_names, terms.extra_tensors, strict=True)]
    if terms.trainable_base != "none":
        biases_only = terms.trainable_base == "biases"
        tensors += [(p.name, p.shape, base_size) for p in spec.params
                    if p.tied_to is None and (not biases_only or p.name.rsplit(".", 1)[-1] == "bias")]
    return tensors


def trainable_tensors(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> list[tuple[Shape, int]]:
    """(shape, itemsize) of every trainable tensor (what optimizers and gradients are priced on)."""
    return [(shape, size) for _, shape, size in named_trainable_tensors(spec, terms, ctx)]


def later_block_gradients(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> int:
    """Gradient bytes of the trainable tensors in blocks 1..L-1 (the first block's backward sees them)."""
    blocks, first = f"{spec.layers_path}.", f"{spec.layers_path}.0."
    return sum(_numel(shape) * size for name, shape, size in named_trainable_tensors(spec, terms, ctx)
               if name.startswith(blocks) and not name.startswith(first))


def step_model(spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext) -> StepModel:
    """Everything about one step that does not depend on batch size or sequence length."""
    terms = method.memory_terms(spec, cfg)
    return step_model_from_terms(spec, terms, ctx)


def step_model_from_terms(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> StepModel:
    tensors = trainable_tensors(spec, terms, ctx)
    gradients = sum(_numel(shape) * size for shape, size in tensors)
    lm_head_grad = 0
    tied_spike = 0
    if terms.trainable_base == "all":
        size = 4 if ctx.optimizer == "adamw-fp32" else DTYPE_BYTES[ctx.dtype]
        vocab_rows = spec.vocab_size * spec.hidden_size * size
        lm_head_grad = vocab_rows
        # The tied matrix receives two gradients (LM head, then embedding); their sum is a third copy.
        tied_spike = 2 * vocab_rows if spec.tie_word_embeddings else 0
    return StepModel(
        spec=spec,
        terms=terms,
        ctx=ctx,
        weights=weight_bytes(spec, terms, ctx),
        optimizer=optimizer_bytes(ctx.optimizer, tensors),
        gradients=gradients,
        activations=activation_profile(spec, terms, ctx),
        lm_head_grad=lm_head_grad,
        tied_spike=tied_spike,
        later_block_gradients=later_block_gradients(spec, terms, ctx),
    )


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class _Moment:
    name: str
    activations: int
    logits: int
    gradients: int
    optimizer_extra: int


def _moments(m: StepModel, batch: int, seq: int) -> list[_Moment]:
    act = m.activations
    at = _at(batch, seq)
    logits_saved = at(act.logits_saved)
    loss_backward = at(act.loss_backward)
    if m.ctx.grad_checkpointing:
        saved = at(act.ckpt_saved)
        in_blocks = saved - at(act.head_saved)
        # A block's backward: its recomputed activations, or a transient of its recomputed forward.
        rebuilt = max(at(act.block_max) + max(at(act.recompute_extra), at(act.backward_temp)),
                      max((at(p) for p in act.recompute_moments), default=0))
        recompute = rebuilt + at(act.grad_stream)
        # The last block runs on top of every checkpoint; the first on top of the later blocks' gradients.
        first_block = in_blocks - at(act.ckpt_later_inputs) + recompute
        moments = [_Moment("recompute", in_blocks + recompute, 0, m.lm_head_grad, 0),
                   _Moment("recompute", first_block, 0, m.lm_head_grad + m.later_block_gradients, 0),
                   _Moment("forward", max((at(p) for p in act.ckpt_moments), default=0), 0, 0, 0)]
    else:
        saved = at(act.saved)
        moments = [_Moment("forward", max((at(p) for p in act.moments), default=0), 0, 0, 0),
                   _Moment("block-bwd", saved - at(act.head_saved) + at(act.backward_temp) + at(act.grad_stream),
                           0, m.lm_head_grad, 0)]
    forward_end = saved + at(act.forward_extra)
    moments += [
        _Moment("loss", forward_end, logits_saved, 0, 0),
        _Moment("loss-bwd", saved, logits_saved + loss_backward, 0, 0),
        _Moment("head-bwd", saved + at(act.grad_stream), loss_backward // 2, m.lm_head_grad, 0),
        _Moment("bwd-end", at(act.batch) + at(act.grad_stream), 0, m.gradients + m.tied_spike, 0),
        _Moment("optimizer", at(act.batch), 0, m.gradients, m.optimizer.step_temporary),
    ]
    return moments


def _at(batch: int, seq: int):  # type: ignore[no-untyped-def]
    def evaluate(p: Poly) -> int:
        return p.at(batch, seq)

    return evaluate


def breakdown(m: StepModel, batch: int, seq: int) -> MemoryBreakdown:
    """Price `m` at (batch, seq): the peak moment's components, reserved, overhead and total."""
    return price(m, batch, seq)[0]


def price(m: StepModel, batch: int, seq: int) -> tuple[MemoryBreakdown, str]:
    """The per-GPU MemoryBreakdown at (batch, seq) and the name of the moment that peaks."""
    shards = m.shards
    weights = m.weights.weights // shards
    if shards > 1:
        # FSDP all-gathers one block's parameters (and prefetches the next) for compute.
        weights += _gathered_block_bytes(m)
    constants = m.weights.quant_constants // shards
    adapter = m.weights.adapter // shards
    states = m.optimizer.states // shards
    best: _Moment | None = None
    best_total = -1
    for moment in _moments(m, batch, seq):
        total = moment.activations + moment.logits + moment.gradients // shards + moment.optimizer_extra // shards
        if total > best_total:
            best, best_total = moment, total
    assert best is not None
    buckets = ddp_bucket_bytes(m)
    peak = weights + constants + adapter + states + best_total + buckets
    reserved = reserved_for(peak)
    overhead = CUDA_CONTEXT
    result = MemoryBreakdown(
        weights=weights,
        quant_constants=constants,
        adapter=adapter,
        gradients=best.gradients // shards + buckets,
        optimizer=states + best.optimizer_extra // shards,
        activations=best.activations,
        logits=best.logits,
        overhead=overhead,
        peak_allocated=peak,
        reserved=reserved,
        total=reserved + overhead,
    )
    return result, best.name


def ddp_bucket_bytes(m: StepModel) -> int:
    """DDP (several GPUs, no sharding) keeps a flat copy of every gradient in its all-reduce buckets,
    allocated when the model is wrapped and alive all step (`gradient_as_bucket_view=False`, the default)."""
    return m.gradients if m.ctx.gpus > 1 and m.ctx.shard == "none" else 0


def _gathered_block_bytes(m: StepModel) -> int:
    """FSDP's unsharded working copy: the current block and the prefetched next one, as stored."""
    spec = m.spec
    per_block = sum(lin.in_features * lin.out_features for lin in spec.layer_linears(0))
    stored_per_param = (m.weights.weights + m.weights.quant_constants) / max(spec.total_params, 1)
    return int(2 * per_block * stored_per_param)


def reserved_for(peak: int) -> int:
    """The caching allocator's reserve at the peak: fragmentation slack, in whole 2 MiB blocks."""
    reserved = int(peak * (1 + FRAGMENTATION))
    return -(-reserved // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK


def estimate_memory(spec: ModelSpec, method: Method, cfg: MethodConfig, ctx: TrainContext) -> MemoryBreakdown:
    """The MemoryBreakdown of one steady-state step of `method` on `spec` under `ctx`."""
    return step_model(spec, method, cfg, ctx).breakdown(ctx.batch_size, ctx.seq_len)
