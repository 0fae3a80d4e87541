"""Activation memory of one training step: the whole model replayed once, priced for any batch and length.

`activation_profile` replays embeddings, every block (blocks with the same adapters share one replay)
and the LM head with its loss, and returns `Poly`s: what autograd keeps at the loss, the logits
terms, what checkpointing keeps instead, and the transient moments that may peak higher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from peftplan.models.arch import Arch, BlockLinears, arch_of, block_linears
from peftplan.models.spec import ModelSpec
from peftplan.planner.blocks import block
from peftplan.planner.context import DTYPE_BYTES, TrainContext
from peftplan.replay.ops import Ops, Replay, Weight
from peftplan.replay.symbolic import ZERO, Graph, Poly, Sym, tokens
from peftplan.replay.terms import MemoryTerms

INDEX_BYTES = 8  # int64 token ids and labels
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

    def temporaries(self, at: Callable[[Poly], int]) -> int:
        """The gradient temporaries of its backward at the step's shape."""
        return max([at(self.backward_temp), *(at(o) for o in self.backward_options)])

    def rebuilt(self, at: Callable[[Poly], int]) -> int:
        """A checkpointed block's backward: its recomputed activations, its working tensors or its
        gradient temporaries on top."""
        return at(self.saved) + max(max((at(w) for w in self.working), default=0), self.temporaries(at))


@dataclass(frozen=True)
class ActivationProfile:
    """Activation bytes of one step as polynomials in batch size and sequence length.

    Attributes:
        saved: what autograd keeps when the loss is reached (all blocks, embeddings, head, batch),
            without the vocabulary-sized loss tensors.
        logits_saved: the log-softmax output (and soft-capping output) kept for backward.
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
        grad_stream: bytes of one gradient of the residual stream (alive throughout backward).
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


def _signature(spec: ModelSpec, terms: MemoryTerms, linears: BlockLinears) -> tuple:
    """What makes two blocks replay alike: their Linears' shapes, adapters and bottleneck sites."""
    parts: list[tuple | None] = []
    for group in (linears.attn_in, (linears.attn_out,), linears.mlp_in, (linears.mlp_out,), linears.other):
        for lin in group:
            if lin is None:
                parts.append(None)
                continue
            adapter = terms.linear_adapters.get(lin.name)
            parts.append((lin.leaf, lin.in_features, lin.out_features, lin.bias, adapter,
                          lin.name in terms.bottleneck_sites))
    for name in (*linears.experts, linears.router):  # adapters on an MoE block's parameters
        wrapper = terms.param_adapters.get(name) if name is not None else None
        parts.append((name.rsplit(".", 1)[-1], wrapper.shape, wrapper.rank) if wrapper is not None and name else None)
    return tuple(parts)


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


def loss_terms(ops: Ops, h: Sym, weight: Weight, ctx: TrainContext, extra: int) -> LossTerms:
    """Replay the output layer and the cross-entropy per `ctx.loss` (see planner/stacks.py).

    - `full` (transformers' `ForCausalLMLoss`): logits of every token, an fp32 copy
      (`logits.float()`), log-softmax's fp32 output saved; its backward holds two fp32 gradients of
      the logits (nll's and log-softmax's).
    - `chunked` (torchtune 0.6's `CEWithChunkedOutputLoss`, litgpt's `chunked_cross_entropy`): the
      model's output layer runs per chunk and returns every chunk's logits; the loss upcasts one
      chunk at a time and saves each chunk's log-softmax output; torchtune's recipe deletes the
      logits before backward, litgpt's loop holds them (`keep_logits`). Backward holds one chunk's
      gradients. `loss_recompute` (TRL's `chunked_nll`)
      checkpoints each chunk: only the hidden states' copy is saved; each chunk upcasts the output
      weight (`w.float()`) and rebuilds its logits, log-probabilities and their exponent.
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
            tile = Poly(c=ctx.loss_chunk_tokens * min(vocab, FUSED_VOCAB_TILE) * low)
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
            # TRL's `chunked_nll` (before 1.16): checkpointed chunks of `loss_chunk_tokens` tokens of the
            # flattened batch. Each chunk's peak, in the forward and again when backward recomputes it, is
            # `w.float()` and its autocast copy beside the chunk's logits; its log-softmax and exponent
            # come after the weight copies are freed, and are far smaller.
            chunk_logits = (Poly(c=ctx.loss_chunk_tokens * vocab * low) if ctx.loss_chunk_tokens
                            else _split(tokens(vocab, extra) * low, ctx.loss_chunks))
            weight_copies = Poly(c=vocab * a.hidden * ((4 if weight.itemsize != 4 else 0) + (low if ops.r.low else 0)))
            chunk = weight_copies + chunk_logits
            return LossTerms(saved=hidden + per_token * INDEX_BYTES, forward_extra=chunk, backward=chunk)
        if ctx.loss_chunk_tokens:
            # Chunks of `loss_chunk_tokens` positions of every sequence (litgpt's `x.split(..., dim=1)`).
            chunk_logits = Poly(b=ctx.loss_chunk_tokens * vocab * low)
            chunk_rows = Poly(b=ctx.loss_chunk_tokens * vocab * loss_size)
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
            chunk_rows = (Poly(b=ctx.loss_chunk_tokens * vocab * 4) if ctx.loss_chunk_tokens
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
        # A trainable output layer gets one weight gradient per chunk: autograd sums them into a buffer,
        # so the buffer and the next chunk's gradient are alive while the other chunks' rows are saved.
        weight_grads = Poly(c=2 * weight.numel * weight.itemsize) if weight.trainable else ZERO
        # A 4-bit output layer (litgpt's `all-linear`) is dequantized whole for each chunk's matmul. Backward
        # runs every chunk's loss first, so that copy sits beside every chunk's logits gradient (the
        # saved rows are freed by then), the held logits and the soft-capping's saved outputs.
        head_backward = ZERO
        if ops.r.quantizes(weight.key, "output"):
            head_backward = held + softcap + logits_bytes + dequantized
        return LossTerms(saved=softcap + rows, forward_extra=copy if cast else logits_bytes + copy,
                         backward=held + chunk_rows * 2 + (chunk_logits if upcast else ZERO) + weight_grads,
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
                     head_forward=logits_bytes + dequantized)


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
    return Poly(n=-(-p.n // parts), s2=-(-p.s2 // parts), b=-(-p.b // parts), s=-(-p.s // parts), c=-(-p.c // parts))


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
    if r.prefix:
        # The (B, 1, S, P + S) mask: float for eager attention, bool for SDPA (which converts it per
        # layer; see `blocks.attention`). Alive until the forward returns.
        eager = r.attention == "eager" or a.attn_softcap
        mask = Sym.fresh(Poly(s2=1, n=r.prefix), x.itemsize if eager else 1, False)
        main.forward_live = main.forward_live + mask.storage_bytes
    elif r.attention == "eager" or a.attn_softcap:
        main.forward_live = main.forward_live + Poly(s2=1) * x.itemsize  # the 4-D causal mask
    shared = frozenset(t.storage for t in (*(rope or ()), mask) if t is not None)
    shared_syms = {t.storage: t for t in (*(rope or ()), mask) if t is not None}

    # -- the blocks -----------------------------------------------------------------------------------
    cache: dict[tuple, _BlockReplay] = {}
    ckpt_inputs = ZERO
    moments: list[Poly] = []  # forward moments without checkpointing (totals)
    ckpt_moments: list[Poly] = []  # forward moments of checkpointed blocks (totals)
    recompute_moments: list[Poly] = []  # transient moments of each kind of block, block-local totals
    first_input = ZERO
    moment_lists: list[list[Poly]] = []
    costs: dict[tuple, BlockCost] = {}  # each kind of block's backward cost
    running = ZERO
    kept_blocks = ZERO  # the blocks' 4-bit Linear inputs bitsandbytes keeps (`bnb_keeps_input`)
    used: set[int] = set()
    forward_live = ZERO
    embeddings = x
    embeddings_held = embeddings.storage_bytes  # LlamaModel.forward keeps `inputs_embeds` until it returns
    for index in range(a.layers):
        linears = block_linears(spec, index)
        key = (_signature(spec, terms, linears), x.grad, x.itemsize)
        replay = cache.get(key)
        if replay is None:
            graph = Graph(external=shared)
            x_in = x if index else embeddings
            out = block(Ops(r, graph), x_in, linears, index, rope, mask)
            replay = cache[key] = _BlockReplay(graph.total(), list(graph.moments), graph.live_moments,
                                               graph.forward_live, set(graph.used_external), out.grad,
                                               out.itemsize, embeddings.storage in graph.saved,
                                               graph.largest * 2 + graph.backward_extra, graph.kept_total(),
                                               tuple(graph.backward_options))
        if index == 0 and replay.keeps_input:
            embeddings_held = ZERO
        ckpt_inputs = ckpt_inputs + x.numel * x.itemsize  # a checkpoint keeps each block's input
        if index == 0:
            first_input = x.numel * x.itemsize
        if not any(replay.moments is seen for seen in moment_lists):  # each kind of block once
            moment_lists.append(replay.moments)
            recompute_moments.extend(replay.moments)
        moments.extend(running + m for m in replay.moments)
        moments.extend(running + unsaved for unsaved, _ in replay.live)
        ckpt_moments.extend(ckpt_inputs + everything for _, everything in replay.live)
        # In a block's backward, gradients of its largest tensors are alive together (about two).
        costs[key] = BlockCost(replay.saved, tuple(unsaved - replay.saved for unsaved, _ in replay.live),
                               replay.backward_temp, replay.backward_options)
        running = running + replay.saved
        kept_blocks = kept_blocks + replay.kept
        used |= replay.used_external
        forward_live = forward_live + replay.forward_live
        x = Sym.fresh(x.numel, replay.out_itemsize, replay.out_grad)
    for storage in used:
        main.save(shared_syms[storage])

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
    forward_extra = forward_live + main.forward_live + loss.forward_extra

    saved_blocks = running
    model_saved = main.total() + head.total()
    saved = model_saved + saved_blocks + batch
    ckpt_saved = model_saved + ckpt_inputs + batch
    stream = tokens(a.hidden, vocab_extra) * x.itemsize
    fixed = main.total() + batch + embeddings_held  # in the blocks' forward the head has saved nothing yet
    ckpt_kept = main.kept_total() + head.kept_total()
    if ctx.kernels == "unsloth":
        return _with_unsloth_blocks(
            spec, r, ActivationProfile(
                saved=saved, logits_saved=loss.saved, loss_backward=loss.backward, held_logits=loss.held,
                head_backward=loss.head_backward,
                forward_extra=forward_extra,
                ckpt_saved=ckpt_saved, blocks=tuple(costs.values()), head_saved=head.total(), grad_stream=stream, batch=batch,
                ckpt_later_inputs=ckpt_inputs - first_input, blocks_saved=saved_blocks, ckpt_inputs=ckpt_inputs,
                ckpt_kept_inputs=ckpt_kept, head_forward=loss.head_forward),
            fixed)
    return ActivationProfile(
        saved=saved,
        logits_saved=loss.saved,
        loss_backward=loss.backward,
        held_logits=loss.held,
        head_backward=loss.head_backward,
        forward_extra=forward_extra,
        ckpt_saved=ckpt_saved,
        moments=[m + fixed for m in moments],
        ckpt_moments=[m + fixed for m in ckpt_moments],
        blocks=tuple(costs.values()),
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
    )
