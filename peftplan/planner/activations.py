"""Activation memory of one training step: the whole model replayed once, priced for any batch and length.

`activation_profile` replays embeddings, every block (blocks with the same adapters share one replay)
and the LM head with its loss, and returns `Poly`s: what autograd keeps at the loss, the logits
terms, what checkpointing keeps instead, and the transient moments that may peak higher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from peftplan.models.arch import Arch, arch_of, block_linears
from peftplan.models.spec import ModelSpec
from peftplan.planner.blocks import block
from peftplan.planner.context import DTYPE_BYTES, INDEX_BYTES, TrainContext
from peftplan.replay.ops import Ops, Replay, Weight
from peftplan.replay.symbolic import ZERO, Graph, Poly, Sym, chunked, tokens
from peftplan.replay.terms import MemoryTerms

FUSED_VOCAB_TILE = 32768  # TRL's `_CHUNKED_LOGPROB_CHUNK_SIZE`: vocabulary entries per fused-loss tile


@dataclass(frozen=True)
class BlockCost:
    """What one kind of block holds around its backward, kept whole so that the step's shape picks the
    largest (terms cross over: eager attention's S² scores against per-token tensors at short lengths).

    Attributes:
        saved: what the block saves for backward (what a checkpointed block rebuilds).
        working: beyond its saved set, what its forward holds at each moment (recomputed with it).
        backward_temp: gradient temporaries alive while it runs backward.
    """

    saved: Poly
    working: tuple[Poly, ...] = ()
    backward_temp: Poly = ZERO
    backward_options: tuple[Poly, ...] = ()  # other sets of gradient temporaries (the largest counts)
    pending: Poly = ZERO  # gradients alive through its recomputed forward (`Graph.pending_gradient`)

    def temporaries(self, at: Callable[[Poly], int]) -> int:
        """The gradient temporaries of its backward at the step's shape."""
        return max([at(self.backward_temp), *(at(o) for o in self.backward_options)])

    def rebuilt(self, at: Callable[[Poly], int]) -> int:
        """A checkpointed block's backward: its recomputed activations, its working tensors or its
        gradient temporaries on top."""
        working = max((at(w) for w in self.working), default=0) + at(self.pending)
        return at(self.saved) + max(working, self.temporaries(at))


@dataclass(frozen=True)
class ActivationProfile:
    """Activation bytes of one step as polynomials in batch size and sequence length.

    Attributes:
        saved: what autograd keeps when the loss is reached (all blocks, embeddings, head, batch),
            without the vocabulary-sized loss tensors.
        logits_saved: the log-softmax output (and soft-capping output) kept for backward; with the MoE
            auxiliary loss, every block's router logits too (held to the loss, then their gradients).
        loss_backward: extra vocabulary-sized gradients alive at the loss backward (its peak).
        forward_extra: beyond `saved`, alive at the end of the forward (logits, KV caches).
        ckpt_saved: with checkpointing, what stays saved instead of `saved` (block inputs, head).
        blocks: each kind of block's `BlockCost` (the step's shape picks the largest).
        recompute_moments: totals a block holds at the transient moments of its forward (DoRA's
            weight norm, a dequantized weight), which its recomputation in backward repeats.
        head_saved: what the head and the loss save (part of `saved` and `ckpt_saved`); freed once
            the head's backward is done, so the blocks' backward runs without it.
        ckpt_later_inputs: the checkpointed inputs of every block but the first (freed, one by one,
            as backward passes the blocks; what remains when the first block recomputes).
        moments: totals at moments of the forward when temporaries are alive (the MLP's working
            tensors, a dequantized weight, DoRA's weight norm).
        ckpt_moments: the same moments with checkpointed blocks (which save nothing in the forward).
        grad_stream: bytes of one gradient of the residual stream (alive throughout backward), and the
            router logits' gradients the MoE auxiliary loss leaves waiting for the blocks' backward.
        batch: the input ids and labels.
    """

    saved: Poly
    logits_saved: Poly
    loss_backward: Poly
    forward_extra: Poly
    ckpt_saved: Poly
    blocks: tuple[BlockCost, ...]
    moments: list[Poly] = field(default_factory=list)
    ckpt_moments: list[Poly] = field(default_factory=list)
    recompute_moments: list[Poly] = field(default_factory=list)
    ckpt_later_inputs: Poly = ZERO
    head_saved: Poly = ZERO
    grad_stream: Poly = ZERO
    batch: Poly = ZERO
    held_logits: Poly = ZERO  # logits the loop holds from the loss to the end of the step (litgpt)
    head_backward: Poly = ZERO  # the loss's moment at a 4-bit output layer's backward (`LossTerms`)
    blocks_saved: Poly = ZERO  # what the blocks save (offloadable without checkpointing)
    ckpt_inputs: Poly = ZERO  # every block's checkpointed input (offloadable with checkpointing)
    kept_inputs: Poly = ZERO  # 4-bit Linears' inputs kept as long as the graph (`bnb_keeps_input`; part of `saved`)
    ckpt_kept_inputs: Poly = ZERO  # the same with checkpointed blocks (only the head's: a block's recomputed graph dies)
    head_forward: Poly = ZERO  # beyond `saved`, alive at the output layer's last matmul (`LossTerms`)
    vision_backward: Poly = ZERO  # a vision tower's backward, run last (planner/vision.py)
    ckpt_vision_backward: Poly = ZERO  # the same under checkpointing
    loss_forward_moments: tuple[Poly, ...] = ()  # beyond `saved`, more candidates at the loss (`LossTerms`)
    loss_backward_moments: tuple[Poly, ...] = ()  # beyond `saved` and `logits_saved`, at the loss's backward
    # Autocast caches its low-precision copy of each trainable leaf weight until the forward ends; the blocks'
    # matmuls save those copies, so only with checkpointed blocks are they extra at the end of the forward.
    ckpt_cast_cache: Poly = ZERO
    # The eager attention's masks, held by every checkpointed block until the first block's backward (with
    # checkpointing; part of `forward_extra` too).
    ckpt_masks: Poly = ZERO


def make_replay(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext, arch: Arch | None = None) -> Replay:
    """The replay settings for a method's terms under a training context."""
    arch = arch or arch_of(spec)
    dtype = DTYPE_BYTES[ctx.dtype]
    master = ctx.optimizer == "adamw-fp32"
    base = base_itemsize(terms, ctx)
    return Replay(
        arch=arch,
        terms=terms,
        low=dtype if ctx.autocast else None,
        base_itemsize=base,
        train_itemsize=4 if master else base,
        compute_itemsize=dtype,
        device=getattr(ctx, "device", "cuda"),
        attention=ctx.attention,
        extra=terms.extra_tokens,
        prefix=terms.prefix_tokens,
        adapter_itemsize=ctx.adapter_itemsize,
        kbit_prep=ctx.kbit_prep,
        bnb_keeps_input=ctx.bnb_keeps_input,
        dequant_extra=2 if ctx.bnb_fp16_state and ctx.dtype != "fp16" else 0,
        model_code=ctx.model_code,
    )


def base_itemsize(terms: MemoryTerms, ctx: TrainContext) -> int:
    """Bytes per element of the base parameters that are not quantized: peft's k-bit preparation
    upcasts them to fp32 on a quantized base; other stacks leave them in the training dtype."""
    if terms.quant != "none" and ctx.kbit_prep == "peft":
        return 4
    return DTYPE_BYTES[ctx.dtype]


def _signature(spec: ModelSpec, terms: MemoryTerms, index: int) -> tuple:
    """What makes two blocks replay alike: their Linears' shapes, adapters and bottleneck sites."""
    linears, parameters = _block_shapes(spec, index)
    adapters, sites = terms.linear_adapters, terms.bottleneck_sites
    parts: list[tuple | None] = [None if entry is None else (*entry[1], adapters.get(entry[0]), entry[0] in sites)
                                 for entry in linears]
    for name in parameters:  # adapters on an MoE block's parameters
        wrapper = terms.param_adapters.get(name) if name is not None else None
        parts.append((name.rsplit(".", 1)[-1], wrapper.shape, wrapper.rank) if wrapper is not None and name else None)
    return tuple(parts)


def _block_shapes(spec: ModelSpec, index: int) -> tuple[list[tuple[str, tuple] | None], tuple[str | None, ...]]:
    """Block `index`'s Linears (name, (leaf, in, out, bias)) and its MoE parameters, as `_signature` reads
    them (once per spec: a plan asks for every block of every candidate)."""
    by_index: dict[int, tuple[list[tuple[str, tuple] | None], tuple[str | None, ...]]] = spec.memo("block_shapes", dict)
    if index not in by_index:
        linears = block_linears(spec, index)
        groups = (linears.attn_in, (linears.attn_out,), linears.mlp_in, (linears.mlp_out,), linears.other)
        by_index[index] = ([None if lin is None else (lin.name, (lin.leaf, lin.in_features, lin.out_features, lin.bias))
                            for group in groups for lin in group], (*linears.experts, linears.router))
    return by_index[index]


@dataclass(frozen=True)
class LossTerms:
    """The vocabulary-sized tensors of the head and loss, per the `loss` knob.

    Attributes:
        saved: what the loss keeps for backward (log-softmax outputs, soft-capping output; the fused
            losses' hidden-sized gradient or inputs).
        forward_extra: alive at the end of the forward beyond `saved` (the logits, their fp32 copy).
        backward: alive on top of `saved` at the loss's backward (gradients of the logits), plus the
            logits themselves when the loop keeps them.
    """

    saved: Poly
    forward_extra: Poly
    backward: Poly
    held: Poly = ZERO  # the logits the loop keeps until the step is over (part of `backward` too)
    head_backward: Poly = ZERO  # alive at the output layer's backward once the rows are freed (a 4-bit head)
    head_forward: Poly = ZERO  # alive at the output layer's last matmul: the logits so far, a 4-bit head's copies
    logits: Poly = ZERO  # transformers' own loss: the logits, alive until the forward returns
    # More candidates for the loss's peak on top of `saved`, when no single polynomial is the largest at every
    # shape (TRL's checkpointed chunks: the output weight's fp32 copy against the chunk's vocabulary-sized tensors).
    forward_moments: tuple[Poly, ...] = ()
    backward_moments: tuple[Poly, ...] = ()


def loss_terms(ops: Ops, h: Sym, weight: Weight, ctx: TrainContext, extra: int) -> LossTerms:
    """Replay the output layer and the cross-entropy per `ctx.loss` (see planner/stacks.py).

    - `full` (transformers' `ForCausalLMLoss`): logits of every token, an fp32 copy
      (`logits.float()`), log-softmax's fp32 output saved; its backward holds two fp32 gradients of
      the logits (nll's and log-softmax's).
    - `chunked` (torchtune 0.6's `CEWithChunkedOutputLoss`, litgpt's `chunked_cross_entropy`): the
      model's output layer runs per chunk and returns every chunk's logits; the loss upcasts one
      chunk at a time and saves each chunk's log-softmax output; torchtune's recipe deletes the
      logits before backward, litgpt's loop holds them (`keep_logits`). Backward holds one chunk's
      gradients. `loss_recompute` (TRL's `chunked_nll`) checkpoints each chunk: only the hidden states'
      copy is saved; each chunk runs again in backward (`_trl_chunked_nll`).
    - `fused` (Liger's fused linear cross-entropy, Unsloth's fused loss, Apple's cut cross-entropy,
      TRL's fused LM head with `loss_chunk_tokens` tiles): no full logits; a hidden-sized tensor is kept (the input gradient computed in the forward, or
      CCE's input) with an fp32 value per token; one block of logits exists at a time, about as many
      values as the hidden states (Liger's chunk is B·S / ceil(V / H) tokens).
    """
    a = ops.r.arch
    vocab = a.vocab
    low = ops.r.low or max(h.itemsize, weight.itemsize)  # the matmul's output dtype
    hidden = tokens(a.hidden, extra) * h.itemsize
    per_token = tokens(1, extra)
    if ctx.loss == "fused":
        # The kernel reads the hidden states and the weight itself; it keeps a hidden-sized tensor.
        if ctx.loss_chunk_tokens:
            # TRL's ChunkedLogProbFunction: fixed tiles of tokens x 32768 vocabulary entries; it saves a
            # copy of the hidden states, log Z and the entropy (fp32), and backward accumulates an fp32
            # gradient of the hidden states.
            # A batch of fewer tokens than a tile has a tile of that many (`min(N, TOKEN_CHUNK_SIZE)` rows).
            tile = chunked(min(vocab, FUSED_VOCAB_TILE) * low, ctx.loss_chunk_tokens, extra)
            return LossTerms(saved=hidden + per_token * 8, forward_extra=tile,
                             backward=tokens(a.hidden, extra) * 4 + tile)
        block = tokens(a.hidden, extra) * (low + 4)  # one block of logits and its fp32 softmax
        # A trainable output layer's whole weight gradient is made in the forward and kept (Liger's grad_weight).
        weight_grad = Poly(c=weight.numel * weight.itemsize) if weight.trainable else ZERO
        return LossTerms(saved=hidden + per_token * 4 + weight_grad, forward_extra=block, backward=hidden + block)
    # Under autocast, cross-entropy is an fp32 op (CUDA and CPU alike): it upcasts low-precision logits
    # itself, so the loss is fp32 whether or not the code calls `.float()` first.
    loss_size = 4 if (ctx.loss_fp32 or low == 4 or ops.r.low is not None) else low
    upcast = low != loss_size
    if ctx.loss == "chunked":
        if ctx.loss_recompute:
            return _trl_chunked_nll(ops, h, weight, ctx, extra)
        if ctx.loss_chunk_tokens:
            # Chunks of `loss_chunk_tokens` positions of every sequence (litgpt's `x.split(..., dim=1)`): a
            # sequence shorter than that is one chunk.
            chunk_logits = chunked(vocab * low, ctx.loss_chunk_tokens, extra, kind="row_min")
            chunk_rows = chunked(vocab * loss_size, ctx.loss_chunk_tokens, extra, kind="row_min")
        else:
            chunk_logits = _split(tokens(vocab, extra) * low, ctx.loss_chunks)
            chunk_rows = _split(tokens(vocab, extra) * loss_size, ctx.loss_chunks)
        # The model's output layer runs per chunk and returns every chunk's logits; the loss upcasts
        # and log-softmaxes one chunk at a time. torchtune's recipe deletes the logits before
        # backward; litgpt's loop holds them (`keep_logits`).
        dequantized = _quantized_head(ops, h, weight)
        logits = ops.matmul(h, weight, vocab)
        logits_bytes = tokens(vocab, extra) * logits.itemsize
        # Fabric's `convert_output` (`output_fp32`) hands the loop fp32 copies of every chunk: the loss reads
        # those, each chunk's backward casts its fp32 gradient back to the logits' dtype.
        cast = ctx.output_fp32 and logits.itemsize < 4
        fp32_logits = tokens(vocab, extra) * 4 if cast else ZERO
        if cast:
            loss_size, upcast = 4, True
            chunk_rows = (chunked(vocab * 4, ctx.loss_chunk_tokens, extra, kind="row_min") if ctx.loss_chunk_tokens
                          else _split(tokens(vocab, extra) * 4, ctx.loss_chunks))
        if ctx.compile_loss:
            # Inductor saves each chunk's logits themselves (so deleting the list frees nothing) and two
            # fp32 values per token; its backward writes one chunk's gradient in the logits' dtype.
            return LossTerms(saved=logits_bytes + per_token * 8, forward_extra=ZERO, backward=chunk_logits)
        rows = tokens(vocab, extra) * loss_size
        copy = fp32_logits if cast else (chunk_rows if upcast else ZERO)
        held = (fp32_logits if cast else logits_bytes) if ctx.keep_logits else ZERO
        # litgpt's model soft-caps each chunk (tanh saves its output); torchtune's Gemma-2 soft-caps the
        # normed hidden state instead, not the logits.
        softcap = logits_bytes if (a.final_softcap and ctx.keep_logits) else ZERO
        # Backward runs every chunk's loss first (the output layer ran on every chunk before the loss), so
        # when the output layer's backward starts, every chunk's logits gradient is alive (the saved rows are
        # freed by then) beside the held logits, the soft-capping's saved outputs and a 4-bit layer's
        # dequantized copy (litgpt's `all-linear` dequantizes it whole for each chunk's matmul). A trainable
        # layer gets one weight gradient per chunk, which autograd sums out of place: from the second chunk
        # on, the running sum, the new gradient and their sum. The two chunks whose gradients are summed first
        # have used their logits gradients by then: the last one (of any size) and a whole one before it, of
        # which only the whole one is counted off (exact when the sequence divides into whole chunks, never low).
        head_backward = held + softcap + logits_bytes + dequantized
        if weight.trainable:
            summed = 2 * weight.numel * weight.itemsize
            if ctx.loss_chunk_tokens:
                tokens_per_chunk = ctx.loss_chunk_tokens
                head_backward = (head_backward + chunked(summed, tokens_per_chunk, extra, kind="seq_above")
                                 - chunked(tokens_per_chunk * vocab * low, tokens_per_chunk, extra,
                                           kind="batch_if_seq_above"))
            elif ctx.loss_chunks > 1:
                head_backward = head_backward + Poly(c=summed) - chunk_logits
        # Backward holds a chunk's nll and log-softmax gradients beside the saved rows; the upcast's gradient
        # (in the logits' dtype) comes once log-softmax's backward has freed the chunk's rows and nll's gradient.
        return LossTerms(saved=softcap + rows, forward_extra=copy if cast else logits_bytes + copy,
                         backward=held + chunk_rows * 2,
                         held=held, head_backward=head_backward, head_forward=logits_bytes + dequantized)
    dequantized = _quantized_head(ops, h, weight)
    logits = ops.matmul(h, weight, vocab)
    logits_bytes = tokens(vocab, extra) * logits.itemsize
    if ctx.compile_loss:  # inductor: the logits and two fp32 values per token; one gradient of the logits
        return LossTerms(saved=logits_bytes + per_token * 8, forward_extra=ZERO, backward=logits_bytes)
    softcap = logits_bytes if a.final_softcap else ZERO  # tanh(logits / cap) * cap saves tanh's output
    if ctx.output_fp32 and logits.itemsize < 4 and not ctx.legacy_loss:
        # Fabric's `convert_output`: the loop holds fp32 logits, the loss reads them; backward casts their
        # fp32 gradient back to the logits' dtype.
        fp32 = tokens(vocab, extra) * 4
        held = fp32 if ctx.keep_logits else ZERO
        return LossTerms(saved=softcap + fp32, forward_extra=fp32, backward=held + 2 * fp32 + logits_bytes,
                         held=held, head_forward=logits_bytes + dequantized)
    rows = tokens(vocab, extra) * loss_size  # log_softmax's output, saved for backward
    as_float = logits_bytes if logits.itemsize != loss_size else ZERO  # as calibrated against the trace
    held = logits_bytes if ctx.keep_logits else ZERO
    if ctx.legacy_loss:
        # transformers < 4.45: `logits.float()` is the model's output (the low-precision logits are
        # freed), `logits[..., :-1, :].contiguous()` a second fp32 copy; backward holds nll's and
        # log-softmax's gradients beside the saved output. The slice's zero-filled full gradient comes
        # once log-softmax's backward has freed its saved output, so it never adds a third.
        fp32 = tokens(vocab, extra) * 4
        held = fp32 if ctx.keep_logits else ZERO  # the model's output is the fp32 logits
        return LossTerms(saved=softcap + rows, forward_extra=2 * fp32, backward=held + 2 * fp32, held=held,
                         head_forward=logits_bytes + dequantized)
    return LossTerms(saved=softcap + rows, forward_extra=logits_bytes + as_float, backward=held + 2 * rows, held=held,
                     head_forward=logits_bytes + dequantized, logits=logits_bytes)


@dataclass(frozen=True)
class AuxLossTerms:
    """transformers' load-balancing loss (`load_balancing_loss_func`, e.g. models/mixtral/modeling_mixtral.py:
    474-547 at 5.23.0), computed when the config's `output_router_logits` is on and the model computes its
    own loss. Every MoE block's router logits (the router's `F.linear` output, `router_logits` at :105) are
    recorded (`OutputRecorder`, :381-383) and so stay alive until the forward returns. After the
    cross-entropy the loss walks the layers one at a time (no concatenation in 5.23): a softmax of each
    layer's logits, saved for backward (fp32 under CUDA autocast, the logits' dtype on CPU, where
    `.float()` then copies it for the sum), top-k (values and int64 indices, the previous layer's still
    referenced), the indices cast to fp32 for `histc`. It is added last, so its backward runs first and
    leaves each layer's logits gradient waiting for that block's backward.

    Attributes:
        per_layer_logits: one MoE block's router logits (held in the forward; also its waiting gradient).
        logits: every MoE block's (at the loss, and their gradients from the loss backward on).
        moment: beyond `saved`, the loss's saved rows, `logits` and the model's logits, alive while the
            last layer is processed: every softmax saved and that layer's temporaries.
    """

    per_layer_logits: Poly
    logits: Poly
    moment: Poly


def aux_loss_terms(r: Replay, ctx: TrainContext) -> AuxLossTerms | None:
    """The auxiliary loss's terms, or None when it is not computed (see `AuxLossTerms`)."""
    a = r.arch
    own_loss = ctx.loss == "full" and ctx.loss_fp32 and not ctx.legacy_loss and ctx.model_code == "transformers"
    if not (a.moe_aux_loss and own_loss and a.moe_layers):
        return None
    experts, k = a.moe_experts, a.moe_top_k
    logit_size = r.low or r.param_itemsize(r.trains_all)  # F.linear under autocast, else the router's dtype
    soft_size = 4 if (r.low is not None and r.device == "cuda") else logit_size  # softmax: fp32 on CUDA autocast
    per_layer = r.tok(experts) * logit_size
    topk = r.tok(k) * (soft_size + INDEX_BYTES)
    upcast = r.tok(experts) * 4 if soft_size != 4 else ZERO  # `routing_weights.float()` before the sum
    temporaries = topk + max(topk, r.tok(k) * 4, upcast, key=lambda p: p.at(1, 1))
    softmaxes = r.tok(experts) * soft_size * a.moe_layers
    return AuxLossTerms(per_layer, per_layer * a.moe_layers, softmaxes + temporaries)


class _Live:
    """The bytes alive while one chunk of TRL's loss runs, and their total at each allocation (a moment).

    In the forward the chunk is checkpointed, so nothing it makes outlives it; when backward recomputes it
    (`keep_saved`), what autograd saves on the loss's path stays for the chunk's backward. The entropy and
    accuracy TRL computes beside the loss are not part of the loss, so their saved tensors are never kept.
    """

    def __init__(self, keep_saved: bool) -> None:
        self.keep_saved = keep_saved
        self.live: dict[str, Poly] = {}
        self.saved: set[str] = set()
        self.moments: list[Poly] = []

    def new(self, name: str, size: Poly) -> str:
        self.live[name] = size
        self.moments.append(self.total())
        return name

    def save(self, *names: str) -> None:
        self.saved.update(names)

    def free(self, *names: str) -> None:
        """Drop temporaries (what autograd saves stays when recomputing); "" names nothing."""
        for name in names:
            if name and not (self.keep_saved and name in self.saved):
                self.live.pop(name, None)

    def release(self, *names: str) -> None:
        """Drop tensors backward is done with (a node's saved tensors, a consumed gradient)."""
        for name in names:
            self.live.pop(name, None)

    def total(self) -> Poly:
        out = ZERO
        for size in self.live.values():
            out = out + size
        return out


def _trl_chunked_nll(ops: Ops, h: Sym, weight: Weight, ctx: TrainContext, extra: int) -> LossTerms:
    """TRL's `chunked_nll` (`_chunked_cross_entropy_loss`, huggingface/trl@f2cd577, `trl/trainer/sft_trainer.py`).

    The valid tokens of the flattened batch are reordered into one copy of the hidden states (saved, with
    the reordered labels, the order and the valid mask), then cut into chunks of `loss_chunk_tokens` rows
    (at most the batch's tokens) or `loss_chunks` equal ones, each run under non-reentrant checkpointing
    (`_trl_chunk`). Nothing of a chunk outlives its forward; its recomputation in backward keeps what the
    loss's path saves, and its backward makes the gradients one op at a time (`_trl_chunk_backward`). Whether
    the fp32 copy of the output weight or the chunk's vocabulary-sized tensors dominate depends on the
    chunk's rows, so every moment is a candidate. Backward accumulates the gradient of the reordered hidden
    states (and of a trainable output weight) across chunks.
    """
    a = ops.r.arch

    def rows(width: int) -> Poly:
        """Elements of a (chunk rows, width) tensor."""
        if ctx.loss_chunk_tokens:
            return chunked(width, ctx.loss_chunk_tokens, extra)
        return _split(tokens(width, extra), ctx.loss_chunks)

    forward = _Live(keep_saved=False)
    _trl_chunk(forward, ops.r, rows, h, weight)
    recompute = _Live(keep_saved=True)
    end = _trl_chunk(recompute, ops.r, rows, h, weight)
    moments = recompute.moments + _trl_chunk_backward(recompute, ops.r, rows, h, weight, end)
    # With several chunks, backward sums each chunk's gradient of the reordered hidden states (full-size) and of
    # a trainable output weight into a buffer; a single chunk's gradient is the whole one.
    if ctx.loss_chunk_tokens:
        accumulated = chunked(a.hidden * h.itemsize if h.grad else 0, ctx.loss_chunk_tokens, extra, kind="above")
        if weight.trainable:
            accumulated = accumulated + chunked(weight.numel * weight.itemsize, ctx.loss_chunk_tokens, kind="step")
    else:
        several = ctx.loss_chunks > 1
        accumulated = tokens(a.hidden, extra) * h.itemsize if h.grad and several else ZERO
        if weight.trainable and several:
            accumulated = accumulated + Poly(c=weight.numel * weight.itemsize)
    hidden = tokens(a.hidden, extra) * h.itemsize
    # In the forward the model's last hidden state stays alive beside the loss (`outputs.last_hidden_state`),
    # and before the chunks its shifted rows are copied (`reshape`) and then reordered (the saved copy).
    forward_moments = (hidden * 2, *(hidden + m for m in forward.moments))
    return LossTerms(saved=hidden + tokens(2 * INDEX_BYTES + 1, extra), forward_extra=ZERO, backward=ZERO,
                     forward_moments=forward_moments, backward_moments=tuple(m + accumulated for m in moments))


@dataclass(frozen=True)
class _ChunkEnd:
    """What a recomputed chunk of TRL's loss leaves for its backward: names of the saved tensors ("" when
    the op saved its input itself, a parameter), itemsizes, and the ops from the matmul to log-softmax."""

    log_p: str
    nll_in: str
    w_in: str
    h_in: str
    lp_size: int
    lsm_cast: bool
    size: int  # the logits' itemsize at log-softmax's input
    mm_size: int  # the matmul's itemsize
    chain: tuple[tuple[str, int], ...]  # (op, the itemsize of its input)


def _trl_chunk(live: _Live, r: Replay, rows: Callable[[int], Poly], h: Sym, weight: Weight) -> _ChunkEnd:
    """Replay TRL's `_chunk` into `live`: `h.float() @ w.float().t()` (autocast casts both operands down
    again), the bias in fp32, `logit_scale`, soft-capping, log-softmax (in fp32 under CUDA's autocast),
    nll (in fp32 under autocast: a saved copy of low-precision log-probabilities), and the entropy for
    logging (`log_p.exp() * log_p`, whose graph is dropped before backward)."""
    a = r.arch
    cells = rows(a.vocab)  # a vocabulary-sized tensor of the chunk, in elements
    h_in = live.new("h32", rows(a.hidden) * 4) if h.itemsize != 4 else ""
    w_in = live.new("w32", Poly(c=weight.numel * 4)) if weight.itemsize != 4 else ""
    temporaries = [h_in, w_in]
    size = 4
    if r.low is not None:
        h_in = live.new("h_low", rows(a.hidden) * r.low)
        w_in = live.new("w_low", Poly(c=weight.numel * r.low))
        temporaries += [h_in, w_in]
        size = r.low
    mm_size = size
    if h.grad and w_in:
        live.save(w_in)
    if weight.trainable and h_in:
        live.save(h_in)
    logits = live.new("logits", cells * size)
    live.free(*temporaries)
    chain: list[tuple[str, int]] = []
    if a.head_bias:
        upcast = live.new("bias32", Poly(c=a.vocab * 4)) if weight.itemsize != 4 else ""
        biased = live.new("biased", cells * 4)  # an fp32 bias promotes the sum to fp32
        live.free(logits, upcast)
        chain.append(("bias", size))
        logits, size = biased, 4
    if a.logit_scale:
        scaled = live.new("scaled", cells * size)
        live.free(logits)
        chain.append(("scale", size))
        logits = scaled
    if a.final_softcap:
        divided = live.new("cap_div", cells * size)
        live.save(live.new("tanh", cells * size))
        live.free(divided)
        capped = live.new("capped", cells * size)
        live.free("tanh", logits)
        chain.append(("softcap", size))
        logits = capped
    lsm_cast = r.low is not None and r.device == "cuda" and size != 4
    lsm_in = live.new("lsm_in", cells * 4) if lsm_cast else logits
    lp_size = 4 if lsm_cast else size
    log_p = live.new("log_p", cells * lp_size)
    live.save(log_p)
    live.free(lsm_in if lsm_cast else "")
    nll_in = log_p
    if r.low is not None and lp_size != 4:
        nll_in = live.new("nll_in", cells * 4)
        live.save(nll_in)
        live.free(nll_in)
    exp = live.new("exp", cells * lp_size)
    product = live.new("entropy", cells * lp_size)
    live.free(exp, product)
    live.free(*list(live.live))  # the chunk returns: its temporaries go, what the loss's path saved stays
    return _ChunkEnd(log_p, nll_in, w_in, h_in, lp_size, lsm_cast, size, mm_size, tuple(chain))


def _trl_chunk_backward(live: _Live, r: Replay, rows: Callable[[int], Poly], h: Sym, weight: Weight,
                        end: _ChunkEnd) -> list[Poly]:
    """The moments of one chunk's backward, from what its recomputation saved (`_trl_chunk`)."""
    a = r.arch
    live.moments = []
    cells = rows(a.vocab)
    grad = ""

    def step(name: str, size: Poly, *done: str) -> None:
        nonlocal grad
        made = live.new(name, size)
        live.release(grad, *done)
        grad = made

    step("g_nll", cells * (4 if end.nll_in != end.log_p else end.lp_size))
    if end.nll_in != end.log_p:
        live.release(end.nll_in)
        step("g_nll_cast", cells * end.lp_size)
    step("g_lsm", cells * end.lp_size, end.log_p)
    size = end.size
    if end.lsm_cast:
        step("g_lsm_cast", cells * size)
    for op, in_size in reversed(end.chain):
        if op == "softcap":  # `cap * tanh(x / cap)`: the product's, tanh's and the division's gradients
            step("g_cap_mul", cells * size)
            step("g_tanh", cells * size, "tanh")
            step("g_cap_div", cells * size)
        else:  # the scale's product; the fp32 bias sum's gradient cast back to the logits' dtype
            step(f"g_{op}", cells * in_size)
            size = in_size
    vocab_grad = grad
    if weight.trainable:
        live.new("g_w", Poly(c=weight.numel * end.mm_size))
    if h.grad:
        live.new("g_h", rows(a.hidden) * end.mm_size)
    live.release(vocab_grad, end.w_in, end.h_in)
    if weight.trainable:  # the weight's gradient cast back to fp32, then to the parameter's dtype
        grad, current = "g_w", end.mm_size
        for itemsize in (4, weight.itemsize):
            if itemsize != current:
                step(f"g_w{itemsize}", Poly(c=weight.numel * itemsize))
                current = itemsize
        live.release(grad)
    if h.grad:  # the rows' gradient cast back to fp32, then to the hidden states' dtype, into a full-size slice
        grad, current = "g_h", end.mm_size
        for itemsize in (4, h.itemsize):
            if itemsize != current:
                step(f"g_h{itemsize}", rows(a.hidden) * itemsize)
                current = itemsize
        step("g_slice", tokens(a.hidden, r.extra) * h.itemsize)
    return live.moments


def _quantized_head(ops: Ops, h: Sym, weight: Weight) -> Poly:
    """A 4-bit output layer (litgpt's `all-linear`): its dequantized weight's bytes, and before bitsandbytes
    0.43.2 the input it keeps (`bnb_keeps_input`). ZERO for an unquantized head."""
    if not ops.r.quantizes(weight.key, "output"):
        return ZERO
    if ops.r.bnb_keeps_input and h.grad:
        ops.g.keep(h)
    return Poly(c=ops.r.dequantized_bytes(weight.numel))


def _with_unsloth_blocks(spec: ModelSpec, r: Replay, profile: ActivationProfile, fixed: Poly) -> ActivationProfile:
    """The profile with Unsloth's kernels in every block (unslothai/unsloth@015bdef, kernels/fast_lora.py,
    kernels/rms_layernorm.py; their Triton code cannot run here, so this prices what they save).

    Per token, in the compute dtype, a block saves: the normed input of the QKV projection (`LoRA_QKV`
    saves X), queries, keys and values and the attention output with flash attention's fp32
    log-sum-exp (`LoRA_W` on o_proj saves that same output), the residual after attention (the
    second RMSNorm's input), the normed MLP input and the gate and up outputs (`LoRA_MLP` saves X, e,
    g and recomputes the activation), and two fp32 RMS statistics: 5H + 2·kv + 2I. Its backward adds
    the MLP's `DW` (I) and the incoming and outgoing gradients (2H); a quantized base dequantizes one
    weight at a time (`fast_dequantize`).

    Raises:
        UnsupportedError: a block that is not Llama-style (gated MLP, RMSNorm, rotary, dense).
    """
    from peftplan.errors import UnsupportedError

    a = r.arch
    if not (a.gated and a.norm == "rms" and a.rotary and not a.moe_experts and a.family != "bert"):
        raise UnsupportedError(f"Unsloth's kernels are priced for Llama-style blocks (gated MLP, RMSNorm, rotary, "
                               f"dense); {spec.architecture} is not one: use --kernels torch")
    size = r.compute_itemsize
    kv = a.kv_heads * a.head_dim
    block = r.tok(5 * a.hidden + 2 * kv + 2 * a.intermediate) * size + r.tok(2) * 4 + r.tok(a.heads) * 4
    backward = r.tok(a.intermediate + 2 * a.hidden) * size
    dequantized = ZERO
    if r.quantized:
        dequantized = Poly(c=max(lin.in_features * lin.out_features for lin in spec.layer_linears(0)) * size)
    running = block * a.layers
    forward = r.tok(2 * a.hidden + 3 * a.intermediate) * size + dequantized  # a block run under no_grad
    head_and_rest = profile.saved - profile.blocks_saved
    return replace(
        profile,
        saved=head_and_rest + running,
        blocks_saved=running,
        blocks=(BlockCost(block + dequantized, (), backward),),
        recompute_moments=[],
        moments=[fixed + running],
        ckpt_moments=[fixed + profile.ckpt_inputs + forward],
        kept_inputs=profile.ckpt_kept_inputs,  # its LoRA kernels dequantize themselves, not through MatMul4Bit
    )


def _split(p: Poly, parts: int) -> Poly:
    """One of `parts` equal chunks of a per-token size (rounded up)."""
    parts = max(1, parts)
    return Poly(n=-(-p.n // parts), s2=-(-p.s2 // parts), b=-(-p.b // parts), s=-(-p.s // parts), c=-(-p.c // parts),
                capped=tuple((cap, -(-k // parts)) for cap, k in p.capped))


def _per_kind(counts: list[int], sizes: list[Poly]) -> Poly:
    """What `counts[i]` blocks of kind `i` hold together, each holding `sizes[i]`."""
    total = ZERO
    for count, size in zip(counts, sizes, strict=False):  # kinds met later than `counts` was taken have none
        if count:
            total = total + size * count
    return total


@dataclass
class _BlockReplay:
    saved: Poly
    moments: list[Poly]
    live: list[tuple[Poly, Poly]]
    forward_live: Poly
    used_external: set[int]
    out_grad: bool
    out_itemsize: int
    keeps_input: bool
    backward_temp: Poly
    kept: Poly = ZERO
    backward_options: tuple[Poly, ...] = ()
    cached: Poly = ZERO  # autocast's cached casts of the block's trainable weights
    recomputed: list[tuple[Poly, Poly]] = field(default_factory=list)  # the `live` moments its recomputation has
    pending: Poly = ZERO  # gradients alive through its recomputation (`Graph.pending_gradient`)


def activation_profile(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext, *,
                       embeds_grad: bool = False) -> ActivationProfile:
    """Replay one training step of `spec` adapted per `terms` under `ctx` (see the module docstring).

    `embeds_grad`: the embeddings require grad although the embedding table is frozen (a VLM's image rows
    from a vision tower that carries grad, planner/vision.py).
    """
    r = make_replay(spec, terms, ctx)
    a = r.arch
    main = Graph()
    ops = Ops(r, main)
    vocab_extra = r.extra

    # -- inputs and embeddings ------------------------------------------------------------------------
    batch = tokens(INDEX_BYTES * 2)  # input ids and labels, already on the device
    emb_itemsize = r.param_itemsize(r.trains_all)
    x = ops.tok(a.hidden, emb_itemsize, r.trains_all or embeds_grad)
    if r.extra:  # prompt tuning: the trained prompt is concatenated in front of the embeddings
        x = ops.tok(a.hidden, emb_itemsize, True)
        main.forward_live = main.forward_live + tokens(INDEX_BYTES, r.extra)  # labels padded for the prompt
    if a.embed_scale:
        x = ops.pointwise(x)
    if a.learned_positions:
        x = ops.add(x, ops.positions(a.hidden, emb_itemsize))
    if a.family == "bert":
        x = ops.layer_norm(x, "embeddings.norm")
    x = ops.dropout(x, a.embed_dropout)

    rope: tuple[Sym, Sym] | None = None
    if a.rotary:
        width = a.head_dim  # cos and sin tables, cast to the activation dtype, shared by every block
        table = ops.r.tok(width) if a.rope_per_example else ops.r.pos(width)
        rope = (ops.fresh(table, x.itemsize, False), ops.fresh(table, x.itemsize, False))
    mask: Sym | None = None
    ckpt_masks = ZERO
    if r.prefix:
        # The (B, 1, S, P + S) mask: float for eager attention, bool for SDPA (which converts it per
        # layer; see `blocks.attention`). Alive until the forward returns.
        mask = Sym.fresh(Poly(s2=1, n=r.prefix), x.itemsize if r.eager else 1, False)
        main.forward_live = main.forward_live + mask.storage_bytes
    elif r.eager:
        # The 4-D causal masks, one per kind of layer (gpt-oss: full and sliding-window; `GptOssModel.forward`
        # builds both, modeling_gpt_oss.py:456-466), in the embeddings' dtype.
        main.forward_live = main.forward_live + Poly(s2=1) * (x.itemsize * a.attn_masks)
        if ctx.model_code == "transformers":
            # Each block gets its mask as the `attention_mask` keyword, which a checkpointed block keeps bound in
            # `partial(forward, self, **kwargs)` (transformers 5.23 modeling_layers.py:120, `GradientCheckpointingLayer`)
            # until its recomputation: alive until the first block's backward.
            ckpt_masks = Poly(s2=1) * (x.itemsize * a.attn_masks)
    shared = frozenset(t.storage for t in (*(rope or ()), mask) if t is not None)
    shared_syms = {t.storage: t for t in (*(rope or ()), mask) if t is not None}

    # -- the blocks -----------------------------------------------------------------------------------
    # Blocks with the same signature and input replay alike: each kind of block is replayed once, and what
    # the blocks hold together is summed per kind from how many blocks of each kind there are.
    kinds: dict[tuple, int] = {}  # a kind of block (signature, input grad and itemsize) -> its index in `replays`
    replays: list[_BlockReplay] = []
    counts: list[int] = []  # blocks of each kind so far
    # Per kind, at its last block: the blocks of each kind before it, the MoE blocks before it, and the input
    # itemsizes of every block up to it (a checkpoint keeps each block's input).
    last: dict[int, tuple[list[int], int, int]] = {}
    moe_blocks = input_itemsizes = 0
    aux = aux_loss_terms(r, ctx)
    embeddings = x
    embeddings_held = embeddings.storage_bytes  # LlamaModel.forward keeps `inputs_embeds` until it returns
    numel, grad, itemsize = x.numel, x.grad, x.itemsize  # the residual stream entering the next block
    for index in range(a.layers):
        key = (_signature(spec, terms, index), grad, itemsize)
        kind = kinds.get(key)
        if kind is None:
            graph = Graph(external=shared)
            x_in = Sym.fresh(numel, itemsize, grad) if index else embeddings
            block_ops = Ops(r, graph)
            out = block(block_ops, x_in, block_linears(spec, index), index, rope, mask)
            kind = kinds[key] = len(replays)
            counts.append(0)
            replays.append(_BlockReplay(graph.total(), list(graph.moments), graph.live_moments,
                                        graph.forward_live, set(graph.used_external), out.grad,
                                        out.itemsize, embeddings.storage in graph.saved,
                                        graph.largest * 2 + graph.backward_extra, graph.kept_total(),
                                        tuple(graph.backward_totals()), block_ops.cached_casts,
                                        graph.recomputed_live, graph.pending))
        replay = replays[kind]
        if index == 0 and replay.keeps_input:
            embeddings_held = ZERO
        input_itemsizes += itemsize
        last[kind] = (list(counts), moe_blocks, input_itemsizes)
        counts[kind] += 1
        if aux is not None and a.is_moe_layer(index):
            moe_blocks += 1
        grad, itemsize = replay.out_grad, replay.out_itemsize
    x = Sym.fresh(numel, itemsize, grad) if a.layers else embeddings
    running = _per_kind(counts, [replay.saved for replay in replays])
    kept_blocks = _per_kind(counts, [replay.kept for replay in replays])  # 4-bit Linear inputs kept (`bnb_keeps_input`)
    forward_live = _per_kind(counts, [replay.forward_live for replay in replays])
    cast_cache = _per_kind(counts, [replay.cached for replay in replays])  # autocast's cached weight casts
    ckpt_inputs = numel * input_itemsizes
    first_input = numel * embeddings.itemsize if a.layers else ZERO
    router = aux.per_layer_logits if aux is not None else ZERO  # the router logits the auxiliary loss holds
    recompute_moments = [m for replay in replays for m in replay.moments]  # transient, block-local totals
    # In a block's backward, gradients of its largest tensors are alive together (about two).
    costs = tuple(BlockCost(replay.saved, tuple(unsaved - replay.saved for unsaved, _ in replay.recomputed),
                            replay.backward_temp, replay.backward_options, replay.pending) for replay in replays)
    used = set().union(*(replay.used_external for replay in replays))
    for storage in used:
        main.save(shared_syms[storage])
    # What earlier blocks hold only grows (saved tensors, router logits, checkpoint inputs, cached casts:
    # bytes, never negative at any shape), so a kind of block's moments peak at its last occurrence:
    # keep that one's (the same maximum; pricing stays linear in the kinds, not the layers).
    moments: list[Poly] = []
    ckpt_moments: list[Poly] = []
    for kind, replay in enumerate(replays):
        before, moe_before, itemsizes = last[kind]
        through = [count + (other == kind) for other, count in enumerate(before)]  # with this block
        held = _per_kind(before, [other.saved for other in replays]) + router * moe_before
        held_ckpt = numel * itemsizes + router * moe_before + _per_kind(through, [other.cached for other in replays])
        moments += [held + m for m in [*replay.moments, *(unsaved for unsaved, _ in replay.live)]]
        ckpt_moments += [held_ckpt + everything for _, everything in replay.live]

    # -- the head and the loss ------------------------------------------------------------------------
    head = Graph()
    hops = Ops(r, head)
    h = x
    if a.family != "bert":
        h = hops.norm(h, a.hidden, "final_norm")
    if a.mlm_head:
        dense = hops.matmul(h, hops.linear_weight("head.transform", a.hidden, a.hidden), a.hidden,
                            bias_trainable=r.trains_biases)
        h = hops.layer_norm(hops.act(dense, a.act), "head.norm")
    lm_trainable = r.trains_all
    lm_itemsize = r.param_itemsize(lm_trainable)
    lm_key = "embeddings" if a.tied else "lm_head"
    loss = loss_terms(hops, h, Weight(a.vocab * a.hidden, lm_itemsize, lm_trainable, lm_key), ctx, vocab_extra)
    head.save(Sym.fresh(tokens(1, vocab_extra), INDEX_BYTES, False))  # the shifted labels (nll target)
    loss_extra = loss.forward_extra
    logits_saved = loss.saved
    if aux is not None:
        # The router logits are held to the loss, then their gradients wait from the loss backward to each
        # block's (priced with the residual stream's, through the whole backward).
        after = loss.logits + aux.moment
        loss_extra = after if after.at(1, 1) > loss_extra.at(1, 1) else loss_extra
        logits_saved = logits_saved + aux.logits
    forward_extra = forward_live + main.forward_live + loss_extra
    loss_forward = tuple(forward_live + main.forward_live + m for m in loss.forward_moments)

    saved_blocks = running
    model_saved = main.total() + head.total()
    saved = model_saved + saved_blocks + batch
    ckpt_saved = model_saved + ckpt_inputs + batch
    stream = tokens(a.hidden, vocab_extra) * x.itemsize + (aux.logits if aux is not None else ZERO)
    fixed = main.total() + batch + embeddings_held  # in the blocks' forward the head has saved nothing yet
    ckpt_kept = main.kept_total() + head.kept_total()
    if ctx.kernels == "unsloth":
        return _with_unsloth_blocks(
            spec, r, ActivationProfile(
                saved=saved, logits_saved=logits_saved, loss_backward=loss.backward, held_logits=loss.held,
                head_backward=loss.head_backward,
                forward_extra=forward_extra,
                ckpt_saved=ckpt_saved, blocks=costs, head_saved=head.total(), grad_stream=stream, batch=batch,
                ckpt_later_inputs=ckpt_inputs - first_input, blocks_saved=saved_blocks, ckpt_inputs=ckpt_inputs,
                ckpt_kept_inputs=ckpt_kept, head_forward=loss.head_forward,
                loss_forward_moments=loss_forward, loss_backward_moments=loss.backward_moments,
                ckpt_cast_cache=cast_cache, ckpt_masks=ckpt_masks),
            fixed)
    return ActivationProfile(
        saved=saved,
        logits_saved=logits_saved,
        loss_backward=loss.backward,
        held_logits=loss.held,
        head_backward=loss.head_backward,
        forward_extra=forward_extra,
        ckpt_saved=ckpt_saved,
        moments=[m + fixed for m in moments],
        ckpt_moments=[m + fixed for m in ckpt_moments],
        blocks=costs,
        recompute_moments=recompute_moments,
        ckpt_later_inputs=ckpt_inputs - first_input,
        head_saved=head.total(),
        grad_stream=stream,
        batch=batch,
        blocks_saved=saved_blocks,
        ckpt_inputs=ckpt_inputs,
        kept_inputs=kept_blocks + ckpt_kept,
        ckpt_kept_inputs=ckpt_kept,
        head_forward=loss.head_forward,
        loss_forward_moments=loss_forward,
        loss_backward_moments=loss.backward_moments,
        ckpt_cast_cache=cast_cache,
        ckpt_masks=ckpt_masks,
    )
