"""Replays of one transformer block and of the model around the blocks, per architecture family.

Each replay follows the transformers implementation of the family op by op (see `ops.py` for what an
op saves), so the saved set is what autograd really keeps: no seq² scores under SDPA/flash, grouped
key/value heads, gated MLPs, the fp32 statistics of RMSNorm, and the adapter terms of `adapters.py`.

With the `model_code` knob at `litgpt` the attention is litgpt's own (`_litgpt_attention`); its norms,
MLPs and residuals allocate and save what transformers' do (cited there).
"""

from __future__ import annotations

from dataclasses import replace

from peftplan.errors import UnsupportedError
from peftplan.models.arch import BlockLinears
from peftplan.models.spec import LinearInfo
from peftplan.planner.adapters import adapted_linear, base_linear
from peftplan.planner.context import INDEX_BYTES
from peftplan.replay.ops import Ops, Weight, promote
from peftplan.replay.symbolic import Poly, Sym

__all__ = ["attention", "block"]


def _kv_tokens(ops: Ops, width: int) -> Poly:
    """Elements of a key/value tensor: the sequence plus prefix-tuning positions."""
    r = ops.r
    return Poly(n=width, b=width * (r.extra + r.prefix))


def _scores(ops: Ops, heads: int) -> Poly:
    """Elements of a (B, heads, S, S_kv) attention-score tensor."""
    r = ops.r
    e, p = r.extra, r.prefix
    return Poly(s2=heads, n=heads * (2 * e + p), b=heads * (e * e + e * p))


def _linear(ops: Ops, x: Sym, lin: LinearInfo | None, width: int) -> Sym:
    if lin is None:
        return ops.tok(width, x.itemsize, x.grad)
    out = adapted_linear(ops, x, lin)
    if lin.name in ops.r.terms.bottleneck_sites:
        terms = ops.r.terms
        out = ops.bottleneck(out, lin.out_features, terms.bottleneck, terms.bottleneck_activation, lin.name)
    return out


# -- attention ---------------------------------------------------------------------------------------
def _qkv(ops: Ops, h: Sym, block: BlockLinears) -> tuple[Sym, Sym, Sym]:
    a = ops.r.arch
    if len(block.attn_in) == 1:  # fused projection: q, k and v are views of one output
        fused = _linear(ops, h, block.attn_in[0], a.q_width + 2 * a.kv_width)
        return fused.view(ops.r.tok(a.q_width)), fused.view(ops.r.tok(a.kv_width)), fused.view(ops.r.tok(a.kv_width))
    by_leaf = {lin.leaf: lin for lin in block.attn_in}
    ordered = list(block.attn_in)
    q_lin = by_leaf.get("q_proj") or by_leaf.get("query") or by_leaf.get("query_proj") or ordered[0]
    k_lin = by_leaf.get("k_proj") or by_leaf.get("key") or by_leaf.get("key_proj") or ordered[1]
    v_lin = by_leaf.get("v_proj") or by_leaf.get("value") or by_leaf.get("value_proj") or ordered[-1]
    return _linear(ops, h, q_lin, a.q_width), _linear(ops, h, k_lin, a.kv_width), _linear(ops, h, v_lin, a.kv_width)


def _rope(ops: Ops, t: Sym, cos: Sym, sin: Sym, rotary_width: int, width: int) -> Sym:
    """`t * cos + rotate_half(t) * sin` on the first `rotary_width` of each head."""
    ops.mul(t, cos)
    ops.mul(t, sin)
    rotated = ops.fresh(t.numel, max(t.itemsize, cos.itemsize), t.grad)
    if rotary_width == width:
        return rotated
    return ops.pointwise(ops.fresh(t.numel, rotated.itemsize, t.grad))  # cat with the pass-through part


def attention(ops: Ops, q: Sym, k: Sym, v: Sym, mask: Sym | None, *, expanded: bool = False,
              widths: tuple[int, int, int] | None = None) -> Sym:
    """The attention core (after projections and rope); returns the (B, S, heads·head_dim) output.
    `expanded`: keys and values already have every query head (litgpt), nothing is repeated.
    `widths`: (query/key, key, value) widths when they are not the config's (MLA: every head has keys,
    and values are narrower than queries)."""
    a = ops.r.arch
    qk_width, k_width, v_width = widths or (a.q_width, a.kv_width, a.kv_width)
    if not ops.r.prefix:
        return _attention_core(ops, q, k, v, mask, expanded=expanded, widths=widths)
    # Prefix tuning: the cache concatenates the trained prefix before the keys/values and holds the
    # result until the forward returns; where the kernel saves that same tensor, it is counted once.
    k = ops.fresh(_kv_tokens(ops, k_width), k.itemsize, True)
    v = ops.fresh(_kv_tokens(ops, v_width), v.itemsize, True)
    out = _attention_core(ops, q, k, v, mask, widths=widths)
    for cached in (k, v):
        if cached.storage not in ops.g.saved:
            ops.g.forward_live = ops.g.forward_live + cached.storage_bytes
    return out


def _attention_core(ops: Ops, q: Sym, k: Sym, v: Sym, mask: Sym | None, *, expanded: bool = False,
                    widths: tuple[int, int, int] | None = None) -> Sym:
    r = ops.r
    a = r.arch
    qk_width, _, v_width = widths or (a.q_width, a.kv_width, a.kv_width)
    out_width = a.q_width if widths is None else a.heads * (v_width // a.kv_heads)
    # transformers repeats kv unless SDPA does GQA
    repeat = a.groups > 1 and (r.eager or mask is not None) and not expanded
    if repeat:
        k = ops.fresh(_kv_tokens(ops, a.q_width), k.itemsize, k.grad)
        v = ops.fresh(_kv_tokens(ops, a.q_width), v.itemsize, v.grad)
    grad = q.grad or k.grad or v.grad
    if r.eager:
        if a.attn_sinks:
            return _eager_sinks(ops, q, k, v, grad)
        return _eager(ops, q, k, v, grad, out_width)
    dropout = a.attn_dropout if r.device == "cpu" else 0.0
    # CPU's SDPA has no fused dropout kernel, and its flash kernel wants one head width for q, k and v
    # (torch 2.13 aten/src/ATen/native/transformers/sdp_utils_cpp.cpp, `check_head_dim_size_cpp`): MLA's
    # narrower values send it to the math path, which stores the scores.
    if dropout > 0 or (r.device == "cpu" and (a.cpu_math_attention or out_width != qk_width)):
        return _sdpa_math(ops, q, k, v, grad, dropout, qk_width, out_width)
    qa, ka, va = ops.autocast_in(q), ops.autocast_in(k), ops.autocast_in(v)
    out = ops.tok(out_width, qa.itemsize, grad)
    if grad:
        lse = ops.tok(a.heads, 4, False)
        # SDPA turns a bool mask into an additive one of the query's dtype, which the kernel saves.
        additive = ops.fresh(mask.numel, qa.itemsize, False) if mask is not None else None
        ops.g.save(qa, ka, va, out, lse, additive)
    if r.device == "cpu" and a.rotary and _rotary_width(ops) != a.head_dim and not expanded:
        # Partial rotary builds q with torch.cat, in (B, heads, S, D) layout; CPU SDPA's output keeps
        # it, so the model's transpose(1, 2).contiguous() is a copy (CUDA kernels return (B, S, ...)).
        return ops.fresh(out.numel, out.itemsize, out.grad)
    return out


def _eager(ops: Ops, q: Sym, k: Sym, v: Sym, grad: bool, out_width: int) -> Sym:
    r = ops.r
    a = r.arch
    qa, ka = ops.autocast_in(q), ops.autocast_in(k)
    low = qa.itemsize
    if grad:
        ops.g.save(qa, ka)
    scores = ops.fresh(_scores(ops, a.heads), low, grad)
    if a.attn_softcap:  # tanh(scores / cap) * cap: tanh saves its output
        capped = ops.fresh(scores.numel, low, grad)
        if grad:
            ops.g.save(capped)
    # Llama-style models call softmax(dtype=float32); GPT-2 and BERT call plain softmax, which autocast
    # runs in fp32 on CUDA but on CPU in the scores' dtype: the low dtype, or the embeddings' dtype once
    # a causal float mask (built in that dtype) is added. Either way softmax saves its output.
    if a.family not in ("gpt2", "bert") or r.device != "cpu":
        softmax_itemsize = 4
    else:
        softmax_itemsize = promote(low, r.param_itemsize(r.trains_all)) if a.causal else low
    softmaxed = ops.fresh(scores.numel, softmax_itemsize, grad)
    probs = softmaxed if a.family == "bert" else ops.cast(softmaxed, q.itemsize)  # BERT does not cast back
    if grad:
        ops.g.save(softmaxed)
    probs = ops.dropout(probs, a.attn_dropout)
    pa, va = ops.autocast_in(probs), ops.autocast_in(v)
    if grad:
        ops.g.save(pa, va)
    out = ops.fresh(r.tok(out_width), low, grad)
    return ops.pointwise(out)  # transpose(1, 2).contiguous() copies


def _eager_sinks(ops: Ops, q: Sym, k: Sym, v: Sym, grad: bool) -> Sym:
    """gpt-oss's `eager_attention_forward` (transformers 5.23 models/gpt_oss/modeling_gpt_oss.py:227-255): the
    scores, scaled and masked, get one sink logit per head and row concatenated (`torch.cat`, B·heads·S·(S_kv+1)),
    shifted by their row maximum (`max` saves its int64 indices), then softmax in the scores' own dtype (saved).
    The matmul with the values reads the probabilities without the sink column, a view of the same storage."""
    r = ops.r
    a = r.arch
    qa, ka = ops.autocast_in(q), ops.autocast_in(k)
    low = qa.itemsize
    if grad:
        ops.g.save(qa, ka)  # torch.matmul(query, key_states.transpose(2, 3))
    scores = _scores(ops, a.heads)
    with_sinks = scores + r.tok(a.heads)  # one more column: the sink
    # The S² tensors are not the block's "largest": their backward is priced below, op by op.
    Sym.fresh(scores, low, grad)  # the product; `* scaling` and `+ attention_mask` make two more like it
    Sym.fresh(with_sinks, low, grad)  # the concatenation; `- max` makes one more like it
    if grad:
        ops.g.save(ops.tok(a.heads, 8, False))  # combined_logits.max(dim=-1): its indices
    probs = Sym.fresh(with_sinks, low, grad)  # F.softmax(..., dtype=combined_logits.dtype): saves its output
    if grad:
        ops.g.save(probs)
        # Backward, beside what the block saved up to here (the MLP's saved tensors are freed by then): the value
        # matmul's gradient of the probabilities (S x S_kv), the slice's (`probs[..., :-1]`: a zero-filled
        # S x (S_kv + 1) copy), softmax's (`_softmax_backward_data`) while that one and the saved probabilities
        # are alive, then `max`'s (`value_selecting_reduction_backward`: a zero-filled scatter of that size)
        # and its sum with softmax's (`cat`'s input gradient). Two full-width gradients at every step.
        ops.g.backward_moment(probs.storage_bytes * 2)
    probs = ops.dropout(probs.view(scores), a.attn_dropout)
    va = ops.autocast_in(v)
    if grad:
        ops.g.save(ops.autocast_in(probs), va)
    out = ops.tok(a.q_width, low, grad)
    return ops.pointwise(out)  # transpose(1, 2).contiguous() copies


def _sdpa_math(ops: Ops, q: Sym, k: Sym, v: Sym, grad: bool, dropout: float, qk_width: int, out_width: int) -> Sym:
    """SDPA's math kernel (CPU with dropout, or with a value width unlike the query's): it upcasts 16-bit
    inputs to fp32 and stores the scores, the dropout noise and the dropped probabilities, each
    (B, heads, S, S_kv) in fp32."""
    a = ops.r.arch
    qa, va = ops.autocast_in(q), ops.autocast_in(v)
    work = 4 if qa.itemsize < 4 else qa.itemsize
    q_scaled = ops.tok(qk_width, work, grad)  # q * sqrt(scale)
    k_scaled = ops.fresh(_kv_tokens(ops, qk_width), work, grad)  # (k * sqrt(scale)).transpose
    v_work = ops.cast(va, work)
    if out_width == qk_width:
        probs = ops.fresh(_scores(ops, a.heads), work, grad)
    else:
        probs = Sym.fresh(_scores(ops, a.heads), work, grad)
    if grad:
        ops.g.save(q_scaled, k_scaled, v_work, probs)
        if dropout > 0:
            ops.g.save(ops.fresh(probs.numel, work, False), ops.fresh(probs.numel, work, grad))  # noise, dropped
        if out_width != qk_width:
            # MLA: the kernel's backward (`_scaled_dot_product_attention_math`, torch 2.13 aten/src/ATen/native/
            # transformers/attention.cpp, run by autograd op by op) first does `bmm(probs, v)`'s: the probabilities'
            # gradient and the values' (fp32, taking the place of `v_work`, whose node is done), then
            # `_softmax_backward_data`'s, the scores' gradient, while the probabilities (saved by softmax) and the
            # scaled q and k are still held: two fp32 S² gradients beside what the block saved up to here, this
            # kernel's own saved tensors included; the MLP's saved tensors are gone by then.
            ops.g.backward_moment(probs.storage_bytes * 2)
    return ops.tok(out_width, qa.itemsize, grad)


# -- MLP -----------------------------------------------------------------------------------------------
def _mlp(ops: Ops, h: Sym, block: BlockLinears, held: tuple[Sym, ...] = ()) -> Sym:
    """The MLP; `held` are tensors the caller keeps alive meanwhile (for the forward's live moment)."""
    a = ops.r.arch
    if a.moe_experts and not block.mlp_in:
        return _moe(ops, h, block, held)
    # An MoE model's dense blocks (DeepSeek's first_k_dense_replace, Qwen3-MoE's mlp_only_layers) have the
    # config's dense width; `intermediate` is then one routed expert's.
    width = a.dense_intermediate if a.moe_experts else a.intermediate
    return _dense_mlp(ops, h, block.mlp_in, block.mlp_out, width, held)


def _dense_mlp(ops: Ops, h: Sym, mlp_in: tuple[LinearInfo, ...], mlp_out: LinearInfo | None, width: int,
               held: tuple[Sym, ...]) -> Sym:
    a = ops.r.arch
    if a.gated:
        if len(mlp_in) == 1:  # fused gate_up: gate and up are views of one output
            fused = _linear(ops, h, mlp_in[0], 2 * width)
            gate, up = fused.view(ops.r.tok(width)), fused.view(ops.r.tok(width))
        else:
            by_leaf = {lin.leaf: lin for lin in mlp_in}
            gate_lin = by_leaf.get("gate_proj") or by_leaf.get("w1") or mlp_in[0]
            up_lin = by_leaf.get("up_proj") or by_leaf.get("w3") or mlp_in[1]
            gate, up = _linear(ops, h, gate_lin, width), _linear(ops, h, up_lin, width)
        activated = ops.act(gate, a.act)
        mixed = ops.mul(activated, up)
        ops.g.live(*held, *ops.held, h, gate, up, activated, mixed)
    else:
        hidden = _linear(ops, h, mlp_in[0] if mlp_in else None, width)
        mixed = ops.act(hidden, a.act)
        ops.g.live(*held, *ops.held, h, hidden, mixed)
    return _linear(ops, mixed, mlp_out, a.hidden)


def _expert_weight(ops: Ops, name: str | None, numel: int) -> tuple[int, bool, Sym | None]:
    """(itemsize, trains, adapted copy) of a fused parameter: the parameter itself, or the copy an
    adapter on it (`ParamAdapterKind.replay_weight`) builds for the forward."""
    r = ops.r
    wrapper = r.terms.param_adapters.get(name) if name is not None else None
    if wrapper is None:
        return r.param_itemsize(r.trains_all), r.trains_all, None
    copy = wrapper.kind.replay_weight(ops, wrapper)
    return (copy.itemsize if copy is not None else r.base_itemsize), True, copy


def _grouped(ops: Ops, x: Sym, weight: tuple[int, bool, Sym | None], out_width: int, *, track: bool = True) -> Sym:
    """transformers' `_grouped_mm(input.to(weight.dtype), weight)`: not autocast, it runs in the weight's
    dtype; saves its input when the weight trains and the weight when the input needs a gradient.
    `track` False: the output's size does not set the block's backward temporaries (the caller does)."""
    itemsize, trains, copy = weight
    xin = ops.cast(x, itemsize)
    if trains:
        ops.g.save(xin)
    if xin.grad and copy is not None:
        ops.g.save(copy)
    out = Sym.fresh(ops.r.tok(out_width), itemsize, x.grad or trains)
    return ops.g.created(out) if track else out


def _moe(ops: Ops, h: Sym, block: BlockLinears, held: tuple[Sym, ...] = ()) -> Sym:
    """A routed MoE block with fused experts, as transformers 5.23 runs it by default (`grouped_mm`,
    `integrations/moe.py: grouped_mm_experts_forward`): the top-k router, the tokens gathered per
    expert (S = tokens·top_k rows, whatever the routing), two grouped matmuls in the weights' dtype,
    the routing weights (fp32) applied, and the rows summed back per token."""
    r = ops.r
    a = r.arch
    k, experts = a.moe_top_k, a.moe_experts
    # Router: F.linear under autocast, softmax of its fp32 copy (saved), top-k (indices saved). DeepSeek-V2
    # casts the input and the weight to fp32 first (`DeepseekV2TopkRouter.forward`, modeling_deepseek_v2.py:99-102):
    # autocast then runs the linear on low-precision copies of those copies, new tensors both.
    x = ops.cast(h, 4) if a.moe_router_fp32 else h
    router_itemsize, router_trains, router_copy = _expert_weight(ops, block.router, a.hidden * experts)
    if router_copy is None:
        weight = ops.linear_weight(block.router or "router", a.hidden, experts)
        if a.moe_router_fp32:
            weight = Weight(weight.numel, 4, weight.trainable)  # `.type(torch.float32)`: not a leaf, not cached
        logits = ops.matmul(x, weight, experts)
    else:
        xa = ops.autocast_in(x)
        ops.g.save(xa, ops.weight_operand(Weight(router_copy.numel.c, 4 if a.moe_router_fp32 else router_itemsize,
                                                 True)) or router_copy)
        logits = ops.tok(experts, r.low or max(x.itemsize, router_itemsize), True)
    ops.g.save(ops.tok(k, 8, False))  # top-k indices
    if a.moe_topk_then_softmax:
        # gpt-oss (`GptOssTopKRouter.forward`, modeling_gpt_oss.py:126-128): the router adds its bias, takes the
        # top-k of the raw logits, and the softmax of those k values in their dtype is the routing weight (saved).
        top = ops.tok(k, logits.itemsize, logits.grad)
        ops.g.save(top)
    else:
        ops.g.save(ops.fresh(logits.numel, 4, logits.grad))  # softmax's fp32 output
        top = ops.tok(k, 4, logits.grad)  # routing weights, normalised in place
        if a.moe_low_weights:
            top = ops.cast(top, logits.itemsize)  # `.to(router_logits.dtype)` (`arch.LOW_WEIGHTS_TYPES`)
    # Experts: sort the (token, expert) pairs, gather the rows, weights per row.
    ops.g.save(ops.tok(2 * k, 8, False))  # the gather's and the weights' indices (perm // k, perm)
    rows = ops.tok(a.hidden * k, h.itemsize, h.grad)  # `selected_hidden_states_g`: alive until the function returns
    weights = ops.tok(k, top.itemsize, top.grad)
    alive = (*held, *ops.held, h, rows)
    gate_up = _expert_weight(ops, _leaf(block.experts, "gate_up_proj"), 0)
    # Its backward holds three gradients of the expert width at once (the product's, the activation's and
    # up's) while the activation's output is still saved; gate_up's output gradient comes once those and
    # the output itself are freed, beside the adapted weight's gradient. Not two of gate_up's output.
    proj = _grouped(ops, rows, gate_up, 2 * a.intermediate * k, track=False)
    # gpt-oss's biases are gathered per row (`selected_biases = ..._bias[expert_ids_g]`, integrations/moe.py:480
    # and :508) and added in place to the product (`_grouped_linear`, :417-419): nothing saved, but the gate_up
    # one stays referenced through the gate until the down one replaces it.
    bias_size = r.param_itemsize(r.trains_all)
    gate_up_bias = Sym.fresh(proj.numel, bias_size, False) if a.moe_expert_bias else None
    width = r.tok(a.intermediate * k) * proj.itemsize
    ops.g.backward_option(width * 3)
    if a.moe_clamped_gate:
        mixed, gate_temps = _clamped_gate(ops, proj, r.tok(a.intermediate * k))
    else:
        gate = proj.view(r.tok(a.intermediate * k))
        mixed, gate_temps = ops.mul(ops.act(gate, a.act), gate), ()
    biases = (gate_up_bias,) if gate_up_bias is not None else ()
    ops.g.live(*alive, proj, *biases, *gate_temps, mixed)  # the gate's last product
    if a.moe_expert_bias:
        # The down bias's gather, before the gate_up one is dropped.
        biases = (Sym.fresh(r.tok(a.hidden * k), bias_size, False),)
        ops.g.live(*alive, mixed, *(b for b in (gate_up_bias, *biases) if b is not None))
    down = _expert_weight(ops, _leaf(block.experts, "down_proj"), 0)
    out = _grouped(ops, mixed, down, a.hidden * k)  # `proj_out`: alive until the function returns
    if down[2] is not None:  # the product's gradient beside the adapted weight's
        ops.g.backward_option(width + down[2].storage_bytes)
    weighted = ops.mul(out, weights, track=False)  # bf16 rows x fp32 weights (Mixtral, DeepSeek): fp32
    ops.g.live(*alive, *biases, out, weighted)
    # The inverse permutation's index, saved by `weighted_out[inv_perm]` before it runs: the routed part's last
    # saved tensor, so a recomputation without shared experts ends here.
    ops.g.save(ops.tok(k, 8, False))
    after = bool(block.shared)
    ordered = Sym.fresh(weighted.numel, weighted.itemsize, weighted.grad)  # `weighted_out[inv_perm]`
    ops.g.live(*alive, *biases, out, weighted, ordered, recomputed=after)
    summed = ops.tok(a.hidden, ordered.itemsize, ordered.grad)  # `.view(tokens, top_k, hidden).sum(dim=1)`
    ops.g.live(*alive, *biases, out, ordered, summed, recomputed=after)
    if weighted.grad and not block.shared:
        # Nothing after the routed rows in the block: its backward starts with the cast's, the sum's (an expanded
        # view) and the view's (`clone`, rows x hidden), none of which reads a saved tensor; the gather's
        # backward reads the inverse permutation, and that read starts a checkpointed block's recomputation.
        ops.g.pending_gradient(weighted.storage_bytes)
    if weighted.grad:
        # The first backward of the routed rows, once the shared experts' (run after them) have freed what they
        # saved: the view's backward copies the summed gradient, expanded over top_k, into (rows, hidden)
        # (`clone`); the gather's (`index_backward`, torch 2.13 tools/autograd/derivatives.yaml `index.Tensor`)
        # makes `new_zeros` of that size and, under a dispatch mode as in the trace, an out-of-place `index_put`;
        # then the product's backward holds that gradient, its product with the weights (the rows' gradient)
        # and with the rows (the weights', before the sum over hidden). Three such tensors either way.
        ops.g.backward_moment(weighted.storage_bytes * 3)
    routed = ops.cast(summed, h.itemsize)
    if not block.shared:
        return routed
    # DeepSeek-V2's shared experts (`DeepseekV2Moe.forward`, modeling_deepseek_v2.py:129-135): a gated MLP of
    # width n_shared_experts·moe_intermediate_size on the block's input, added to the routed output.
    by_leaf = {lin.leaf: lin for lin in block.shared}
    shared_in = tuple(lin for lin in block.shared if lin.leaf != "down_proj")
    shared = _dense_mlp(ops, h, shared_in, by_leaf.get("down_proj"), a.moe_shared_intermediate, (*held, routed))
    return ops.add(routed, shared)


def _clamped_gate(ops: Ops, proj: Sym, half: Poly) -> tuple[Sym, tuple[Sym, ...]]:
    """gpt-oss's `GptOssExperts._apply_gate` (modeling_gpt_oss.py:81-87) on the interleaved gate/up product:
    both clamps save their input (the product), sigmoid its output, and the two products their operands:
    the product, the clamped gate, the sigmoid, the glu and `up + 1`, each (rows, I) but the product.
    Returns the output and what else is alive when it is made (the clamped up, saved by nothing)."""
    if proj.grad:
        ops.g.save(proj)  # gate.clamp(max=limit) and up.clamp(-limit, limit) read the views of it
    gate = ops.fresh(half, proj.itemsize, proj.grad)
    up = ops.fresh(half, proj.itemsize, proj.grad)
    sig = ops.act(ops.pointwise(gate), "sigmoid")  # torch.sigmoid(gate * alpha)
    glu = ops.mul(gate, sig)
    return ops.mul(ops.pointwise(up), glu), (up,)  # (up + 1) * glu


def _leaf(names: tuple[str, ...], leaf: str) -> str | None:
    return next((n for n in names if n.endswith("." + leaf)), None)


# -- blocks --------------------------------------------------------------------------------------------
def block(ops: Ops, x: Sym, linears: BlockLinears, index: int, rope: tuple[Sym, Sym] | None, mask: Sym | None) -> Sym:
    """One block of the stack; returns its output (the next block's input)."""
    family = ops.r.arch.family
    if family == "bert":
        return _post_norm_block(ops, x, linears, index, mask)
    if family in ("parallel",):
        return _parallel_block(ops, x, linears, index, rope, mask)
    return _pre_norm_block(ops, x, linears, index, rope, mask)


def _attention_sublayer(ops: Ops, h: Sym, linears: BlockLinears, index: int,
                        rope: tuple[Sym, Sym] | None, mask: Sym | None) -> Sym:
    a = ops.r.arch
    if ops.r.model_code == "litgpt":
        return _litgpt_attention(ops, h, linears, rope, mask)
    if a.mla is not None:
        return _latent_attention(ops, h, linears, index, rope, mask)
    q, k, v = _qkv(ops, h, linears)
    if a.qk_norm:
        rows = Poly(n=a.heads, b=a.heads * ops.r.extra)
        q = ops.rms_norm(q, a.head_dim, f"{index}.q_norm", rows=rows)
        k = ops.rms_norm(k, a.head_dim, f"{index}.k_norm", rows=Poly(n=a.kv_heads, b=a.kv_heads * ops.r.extra))
    if rope is not None:
        cos, sin = rope
        rotary = _rotary_width(ops)
        q = _rope(ops, q, cos, sin, rotary, a.head_dim)
        k = _rope(ops, k, cos, sin, rotary, a.head_dim)
    out = attention(ops, q, k, v, mask)
    return _linear(ops, out, linears.attn_out, a.hidden)


def _latent_attention(ops: Ops, h: Sym, linears: BlockLinears, index: int,
                      rope: tuple[Sym, Sym] | None, mask: Sym | None) -> Sym:
    """DeepSeek-V2's `DeepseekV2Attention.forward` (transformers 5.23 models/deepseek_v2/modeling_deepseek_v2.py:367-418):
    q from `q_proj` (or q_a_proj -> q_a_layernorm -> q_b_proj), the key/value latent from `kv_a_proj_with_mqa`
    split into the normed latent (`kv_a_layernorm`) and one shared rotary key, rope on q's and k's rotary parts,
    q concatenated back, and `expand_kv` (:348-365): `kv_b_proj` of the latent gives each head's key part and
    value (a view), and the key is a new tensor filled by `copy_` (nothing saved)."""
    r = ops.r
    a = r.arch
    m = a.mla
    assert m is not None
    by_leaf = {lin.leaf: lin for lin in linears.attn_in}
    qk_width = a.heads * m.qk_head
    if m.q_lora_rank:
        q_latent = _linear(ops, h, by_leaf.get("q_a_proj"), m.q_lora_rank)
        q_latent = ops.rms_norm(q_latent, m.q_lora_rank, f"{index}.q_a_layernorm")
        q = _linear(ops, q_latent, by_leaf.get("q_b_proj"), qk_width)
    else:
        q = _linear(ops, h, by_leaf.get("q_proj"), qk_width)
    compressed = _linear(ops, h, by_leaf.get("kv_a_proj_with_mqa"), m.kv_lora_rank + m.qk_rope)
    latent = ops.rms_norm(compressed.view(r.tok(m.kv_lora_rank)), m.kv_lora_rank, f"{index}.kv_a_layernorm")
    if rope is not None:
        # `apply_rotary_emb` (:259-272): `x.float()` viewed as complex, times `freqs_cis` (the shared table,
        # saved), `view_as_real`, `type_as(x)`: transients and a low-precision result, for q's and k's parts.
        for width in (a.heads * m.qk_rope, m.qk_rope):
            ops.tok(width, 4, True)  # the fp32 copy
            ops.tok(width, 4, True)  # the complex64 product
            ops.g.save(rope[0])
    low = q.itemsize
    query = ops.tok(qk_width, low, q.grad)  # torch.cat((q_nope, q_pe), dim=-1)
    kv = _linear(ops, latent, by_leaf.get("kv_b_proj"), a.heads * (m.qk_nope + m.v_head))
    key = ops.tok(qk_width, kv.itemsize, kv.grad or compressed.grad)  # new_empty + copy_ of k_nope and k_pe
    value = kv.view(r.tok(a.heads * m.v_head))
    out = attention(ops, query, key, value, mask, widths=(qk_width, qk_width, a.heads * m.v_head))
    return _linear(ops, out, linears.attn_out, a.hidden)


def _rotary_width(ops: Ops) -> int:
    a = ops.r.arch
    return int(a.head_dim * a.rotary_fraction)


def _pre_norm_block(ops: Ops, x: Sym, linears: BlockLinears, index: int,
                    rope: tuple[Sym, Sym] | None, mask: Sym | None) -> Sym:
    a = ops.r.arch
    h = ops.norm(x, a.hidden, f"{index}.norm1")
    attn = _attention_sublayer(ops, h, linears, index, rope, mask)
    if a.norms_per_layer >= 4:
        attn = ops.norm(attn, a.hidden, f"{index}.post_attn_norm")
    attn = ops.dropout(attn, a.hidden_dropout)
    x = ops.add(x, attn)
    h = ops.norm(x, a.hidden, f"{index}.norm2")
    mlp = _mlp(ops, h, linears, held=(x,))
    if a.norms_per_layer >= 4:
        mlp = ops.norm(mlp, a.hidden, f"{index}.post_mlp_norm")
    mlp = ops.dropout(mlp, a.hidden_dropout)
    return ops.add(x, mlp)


def _parallel_block(ops: Ops, x: Sym, linears: BlockLinears, index: int,
                    rope: tuple[Sym, Sym] | None, mask: Sym | None) -> Sym:
    """Phi / GPT-NeoX / Falcon: attention and MLP read the same normed input (or two norms of x)."""
    a = ops.r.arch
    h = ops.norm(x, a.hidden, f"{index}.norm1")
    attn = ops.dropout(_attention_sublayer(ops, h, linears, index, rope, mask), a.hidden_dropout)
    h2 = ops.norm(x, a.hidden, f"{index}.norm2") if a.norms_per_layer >= 2 else h
    mlp = ops.dropout(_mlp(ops, h2, linears, held=(x, h, attn)), a.hidden_dropout)
    return ops.add(ops.add(attn, mlp), x)


def _post_norm_block(ops: Ops, x: Sym, linears: BlockLinears, index: int, mask: Sym | None) -> Sym:
    """BERT / RoBERTa: LayerNorm(x + dropout(sublayer(x))) twice."""
    a = ops.r.arch
    attn = _attention_sublayer(ops, x, linears, index, None, mask)
    x = ops.layer_norm(ops.add(ops.dropout(attn, a.hidden_dropout), x), f"{index}.norm1")
    mlp = _mlp(ops, x, linears, held=(x,))
    return ops.layer_norm(ops.add(ops.dropout(mlp, a.hidden_dropout), x), f"{index}.norm2")


# -- litgpt's attention (`model_code` litgpt) ------------------------------------------------------------
# Read from litgpt's model at the published rows' commits: lit_gpt/model.py @8641822 (CausalSelfAttention
# l.186-254) and litgpt/model.py @5895df10, f247be87, 916a84ca, 00af8b0d (the same code, l.213-258 at
# 5895df10); litgpt/lora.py @5895df10 (LoRAQKVLinear l.396-431, zero_pad l.279-340). Since fabf765b
# (2024-12-26, in 0.5.13) q, k and v are split instead of interleaved, k and v are repeated after the RoPE
# (`repeat_interleave`, model.py l.536-539 @2685705) and `zero_pad` fills in place (lora.py l.321-326):
# the same saved tensors, fewer temporaries.
def _litgpt_qkv(ops: Ops, h: Sym, block: BlockLinears) -> Sym:
    """`qkv = self.attn(x)`: one fused Linear of width (heads + 2·kv_heads)·head_size (model.py l.196
    @5895df10), with litgpt's LoRA around it when any of q, k, v is adapted (LoRAQKVLinear)."""
    a = ops.r.arch
    width = a.q_width + 2 * a.kv_width
    lins = block.attn_in
    fused = replace(lins[0], out_features=width) if len(lins) > 1 else lins[0]
    pretrained = base_linear(ops, h, fused)  # `pretrained = self.linear(x)` (lora.py l.417)
    adapted = [lin for lin in lins if ops.r.adapter(lin.name) is not None]
    if not adapted:
        return pretrained
    adapter = ops.r.adapter(adapted[0].name)
    assert adapter is not None
    if adapter.kind.name not in ("lora", "qlora"):
        raise UnsupportedError(f"litgpt's model code has LoRA only, not {adapter.kind.name}: use --model-code transformers")
    size = ops.r.adapter_itemsize
    enabled = width if len(adapted) == len(lins) else sum(lin.out_features for lin in adapted)
    # `after_A = F.linear(self.lora_dropout(x), self.lora_A)` (l.420): one dropout and one lora_A of
    # r·(enabled parts) rows for the whole fused projection; lora_A saves the dropped input.
    dropped = ops.dropout(ops.cast(h, size), adapter.dropout)
    parts = len(adapted) if len(lins) > 1 else 1
    after_a = ops.matmul(dropped, Weight(adapter.rank * parts * a.hidden, size, True, fused.name + ".lora_A"),
                         adapter.rank * parts)
    # `self.conv1d(after_A.transpose(-2, -1), self.lora_B.unsqueeze(-1))` (l.424): conv1d saves its input
    # (after_A) and reads lora_B; grouped queries convolve each part and `torch.cat` them (l.371-375).
    after_b = ops.matmul(after_a, Weight(enabled * adapter.rank, size, True, fused.name + ".lora_B"), enabled)
    if a.groups > 1 and parts > 1:
        after_b = ops.pointwise(after_b)
    if enabled != width:
        # `zero_pad` (l.334-340): `x.new_zeros(..., out_features)`, the transposed update reshaped (a copy),
        # and `result.index_copy(1, torch.tensor(self.lora_ind), ...)`, out of place: a full-width result.
        # `index_copy`'s backward reads its source and index (pytorch tools/autograd/derivatives.yaml,
        # `index_copy`: `grad.index_select(dim, index).expand_as(source)`; IndexCopyBackward0 keeps
        # `_saved_source` and `_saved_index`): the copy and the int64 index stay for backward. litgpt 0.5.13's
        # `result.index_copy_(dim=-1, index=self.lora_ind, source=x)` (lora.py l.321-326 @2685705) saves the
        # update itself and a clone of the `_lora_ind` buffer: the same bytes.
        zeros = ops.tok(width, after_b.itemsize, False)
        ops.g.save(ops.pointwise(after_b), ops.fresh(Poly(c=enabled), INDEX_BYTES, False))
        after_b = ops.fresh(zeros.numel, after_b.itemsize, True)
    lora = ops.pointwise(after_b)  # `* self.scaling` (l.430)
    return ops.add(pretrained, lora)  # `pretrained + lora` (l.431)


def _litgpt_rope(ops: Ops, t: Sym, width: int, rope: tuple[Sym, Sym]) -> Sym:
    """`apply_rope(t[..., :rope_n_elem], cos, sin)` and `torch.cat((roped, t[..., rope_n_elem:]), dim=-1)`
    (model.py l.237-240 @5895df10): `torch.cat((-x2, x1))` (l.377), `x * cos + rotated * sin` (l.378; cos
    and sin are bf16 buffers under bf16-true, so `.to(dtype)` at l.379 is free) and the cat, a new
    tensor even when nothing passes through. Each product saves only the cos or sin table."""
    a = ops.r.arch
    rot = ops.r.tok(width // a.head_dim * _rotary_width(ops))
    cos, sin = rope
    x = Sym.fresh(rot, t.itemsize, t.grad)  # the slice (a view of t)
    ops.fresh(Poly(n=rot.n // 2, b=rot.b // 2), t.itemsize, t.grad)  # -x2
    rotated = ops.fresh(rot, t.itemsize, t.grad)
    roped = ops.add(ops.mul(x, cos), ops.mul(rotated, sin))
    del roped
    return ops.fresh(t.numel, t.itemsize, t.grad)


def _litgpt_attention(ops: Ops, h: Sym, linears: BlockLinears, rope: tuple[Sym, Sym] | None,
                      mask: Sym | None) -> Sym:
    """litgpt's `CausalSelfAttention.forward` (see above for the commits)."""
    r = ops.r
    a = r.arch
    if a.qk_norm or r.prefix or r.extra:
        raise UnsupportedError("litgpt's attention is priced without q/k norms and virtual tokens; "
                               "use --model-code transformers")
    qkv = _litgpt_qkv(ops, h, linears)
    if a.groups > 1:
        # `qkv.view(B, T, groups, q_per_kv + 2, hs).permute(0, 2, 3, 1, 4)`, split, `k.expand(...)`,
        # then `reshape(B, -1, T, hs)` (l.220-235): q, k and v are copies, k and v with every query head.
        q = ops.tok(a.q_width, qkv.itemsize, qkv.grad)
        k = ops.tok(a.q_width, qkv.itemsize, qkv.grad)
        v = ops.tok(a.q_width, qkv.itemsize, qkv.grad)
    else:
        # One query per group: the reshapes are views of qkv, so SDPA saving v keeps all of qkv.
        q = qkv.view(r.tok(a.q_width))
        k = qkv.view(r.tok(a.kv_width))
        v = qkv.view(r.tok(a.kv_width))
    if rope is not None:
        q = _litgpt_rope(ops, q, a.q_width, rope)
        k = _litgpt_rope(ops, k, a.q_width, rope)
    out = attention(ops, q, k, v, mask, expanded=True)
    # `y.reshape(B, T, C)` of SDPA's `(B, nh, T, hs)` output transposed (l.249): q comes from `torch.cat`
    # in that layout, which the kernel's output keeps, so the reshape copies.
    y = ops.fresh(out.numel, out.itemsize, out.grad)
    return _linear(ops, y, linears.attn_out, a.hidden)
