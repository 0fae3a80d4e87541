"""One Linear of the base, with its bitsandbytes storage and the adapter peft wraps around it.

The adapter's own forward is its kind's (`AdapterKind.replay`, in its method's package); this module
replays the base layer and calls the kind, so no method is named here.
"""

from __future__ import annotations

from peftplan.models.spec import LinearInfo
from peftplan.replay.ops import Ops
from peftplan.replay.symbolic import Sym, const


def adapted_linear(ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
    """`module(x)` for the base Linear `lin` with whatever the method puts around it."""
    adapter = ops.r.adapter(lin.name)
    if adapter is None:
        return base_linear(ops, x, lin)
    x_in = adapter.kind.replay_input(ops, x, lin)
    return adapter.kind.replay(ops, x, base_linear(ops, x_in, lin), lin, adapter)


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
