"""One Linear of the base, with its bitsandbytes storage and the adapter peft wraps around it.

Each emitter replays the forward of the real module (peft 0.21's LoRA, DoRA, IA3, LoHa, LoKr and
VeRA layers; the Houlsby bottleneck of `methods/adapter.py`): peft keeps adapter weights in fp32 and
casts the layer input to fp32 before the adapter, and under autocast the adapter's matmuls then run
on low-precision copies of that input.
"""

from __future__ import annotations

from peftplan.methods.memory import LinearAdapter
from peftplan.models.spec import LinearInfo
from peftplan.planner.ops import Ops, Weight
from peftplan.planner.symbolic import Sym, const


def adapted_linear(ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
    """`module(x)` for the base Linear `lin` with whatever the method puts around it."""
    adapter = ops.r.adapter(lin.name)
    if adapter is not None and adapter.kind == "ia3_in":
        x = _ia3_in(ops, x, lin)
    result = base_linear(ops, x, lin)
    if adapter is None or adapter.kind == "ia3_in":
        return result
    return _EMITTERS[adapter.kind](ops, x, result, lin, adapter)


def base_linear(ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
    """The base layer: a plain (maybe trainable) Linear, or a bitsandbytes 4/8-bit one (frozen)."""
    r = ops.r
    bias_trainable = lin.bias and r.trains_biases
    if not r.quantizes(lin.name, lin.role):
        weight = ops.linear_weight(lin.name, lin.in_features, lin.out_features)
        return ops.matmul(x, weight, lin.out_features, bias_trainable=bias_trainable)
    # bitsandbytes casts the input to its compute dtype, dequantizes the weight into a temporary,
    # and casts the output back to the input dtype. Autograd saves no activation for a frozen weight;
    # before bitsandbytes 0.43.2, MatMul4Bit keeps its input in `ctx.tensors` (`bnb_keeps_input`).
    x_compute = ops.cast(x, r.compute_itemsize)
    kept = r.bnb_keeps_input and x_compute.grad
    if kept:
        ops.g.keep(x_compute)
    dequantized = r.dequantized_bytes(lin.in_features * lin.out_features)
    extra = const(dequantized) + (x_compute.numel * x_compute.itemsize if x_compute is not x and not kept else const(0))
    ops.g.transient(extra)
    return ops.tok(lin.out_features, x.itemsize, x.grad or bias_trainable)


def _lora_branch(ops: Ops, x: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    """`lora_B(lora_A(dropout(x.to(adapter dtype))))` (fp32 in peft)."""
    size = ops.r.adapter_itemsize
    xc = ops.cast(x, size)
    dropped = ops.dropout(xc, adapter.dropout)
    a = ops.matmul(dropped, Weight(adapter.rank * lin.in_features, size, True, lin.name + ".lora_A"), adapter.rank)
    return ops.matmul(a, Weight(lin.out_features * adapter.rank, size, True, lin.name + ".lora_B"), lin.out_features)


def _lora(ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    update = ops.pointwise(_lora_branch(ops, x, lin, adapter))  # * scaling
    return ops.cast(ops.add(result, update), result.itemsize)


def _dora(ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    r = ops.r
    fan_in, fan_out, rank = lin.in_features, lin.out_features, adapter.rank
    # The weight norm ||W + s·B·A|| is rebuilt every forward: B(A(eye)) through the adapter (peft does
    # this for FSDP), then detached. The graph of B(A(eye)) keeps the identity the first matmul read
    # (its autocast copy, or the fp32 identity itself) until the module returns.
    low = r.low or 4
    eye32 = fan_in * fan_in * 4
    kept_eye = fan_in * fan_in * low
    lora_weight = fan_in * rank * low + fan_in * fan_out * low
    building = eye32 + (kept_eye if low != 4 else 0) + lora_weight
    # Summing: lora_weight and the (dequantized) base weight, both as fp32 (their low-precision
    # copies are gone once upcast), then s·BA and W + s·BA.
    weight32 = fan_in * fan_out * 4
    base_weight = weight32 if (r.quantized or r.base_itemsize != 4) else 0
    summing = kept_eye + fan_in * rank * low + weight32 + base_weight + 2 * weight32
    ops.g.transient(const(max(building, summing)))
    magnitude = Sym.fresh(const(fan_out), 4, True)  # magnitude / weight_norm, a tiny vector
    lora_result = _lora_branch(ops, x, lin, adapter)
    base_term = ops.mul(magnitude, result)  # (mag_norm_scale - 1) * base_result
    lora_term = ops.pointwise(ops.mul(magnitude, lora_result))  # mag_norm_scale * lora_result * scaling
    dora = ops.add(base_term, lora_term)
    return ops.cast(ops.add(result, dora), result.itemsize)


def _ia3_out(ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    scaled = ops.mul_param(result, Weight(lin.out_features, ops.r.adapter_itemsize, True))
    return ops.cast(scaled, result.itemsize)


def _ia3_in(ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
    x32 = ops.cast(x, ops.r.adapter_itemsize)
    scaled = ops.mul_param(x32, Weight(lin.in_features, ops.r.adapter_itemsize, True))
    return ops.cast(scaled, x.itemsize)


def _loha(ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    # HadaWeight: ((w1a @ w1b) * (w2a @ w2b)) * scale, built in the autocast dtype when autocast is on.
    size = ops.r.low or 4
    numel = lin.in_features * lin.out_features
    ops.g.transient(const(3 * numel * size))
    # Backward: the delta's gradient, and HadaWeight rebuilding one factor product plus its temporary.
    ops.g.backward_temporary(const(numel * size + 2 * numel * 4))
    delta = Sym.fresh(const(numel), size, True)
    out = ops.matmul_sym(ops.cast(x, size), delta, lin.out_features)
    return ops.cast(ops.add(result, out), result.itemsize)


def _lokr(ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    # kron(w1, w2) * scale in fp32 (the factors are fp32 parameters); the kron output is a temporary.
    numel = lin.in_features * lin.out_features
    ops.g.transient(const(numel * 4))
    ops.g.backward_temporary(const(numel * (4 + (ops.r.low or 4))))  # the delta's gradient, then upcast
    delta = Sym.fresh(const(numel), 4, True)
    out = ops.matmul_sym(ops.cast(x, 4), delta, lin.out_features)
    return ops.cast(ops.add(result, out), result.itemsize)


def _vera(ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
    # lambda_b * (lambda_d * (x @ A.T) @ B.T) with A, B frozen slices of the shared projections.
    rank = adapter.rank
    xc = ops.dropout(ops.cast(x, 4), adapter.dropout)
    down = ops.matmul(xc, Weight(rank * lin.in_features, 4, False), rank)
    scaled_down = ops.mul_param(down, Weight(rank, 4, True))
    up = ops.matmul(scaled_down, Weight(lin.out_features * rank, 4, False), lin.out_features)
    scaled_up = ops.mul_param(up, Weight(lin.out_features, 4, True))
    return ops.cast(ops.add(result, scaled_up), result.itemsize)


_EMITTERS = {"lora": _lora, "dora": _dora, "ia3_out": _ia3_out, "loha": _loha, "lokr": _lokr, "vera": _vera}


def bottleneck(ops: Ops, hidden: Sym, width: int, size: int, activation: str, key: str) -> Sym:
    """The Houlsby adapter of `methods/adapter.py`: `h + up(act(down(h.to(fp32)))).to(h.dtype)`."""
    h32 = ops.cast(hidden, 4)
    down = ops.matmul(h32, Weight(width * size, 4, True, key + ".down"), size, bias_trainable=True)
    act = ops.act(down, activation)
    up = ops.matmul(act, Weight(size * width, 4, True, key + ".up"), width, bias_trainable=True)
    return ops.add(hidden, ops.cast(up, hidden.itemsize))
