"""OFT's forward as peft 0.21 runs it (`peft/tuners/oft/layer.py`), replayed.

OFT rotates the layer's *input*, block by block, and feeds the rotated input to the frozen base layer:

    x32 = x.to(oft_R.weight.dtype)                      # fp32 in peft
    Q = skew(oft_R.weight)                              # (nb, b, b) from the stored upper triangles
    R = I + 2Q + 2Q² + ... + Qⁿ⁻¹    (Cayley-Neumann)   # n = num_cayley_neumann_terms
      | solve(I + Q, I - Q, left=False)   (Cayley)      # (I - Q)(I + Q)⁻¹
    R = R.repeat(r, 1, 1) if block_share                 # one block for every block of the layer
    y = einsum("...rk,rkc->...rc", x32.view(..., r, b), R).reshape(x.shape).to(fp32)
    result = base_layer(y.to(x.dtype))

What autograd saves, per adapted Linear (checked with saved-tensor hooks on peft 0.21.2):
- the rotation's construction (a few (nb, b, b) tensors, independent of batch and length): each bmm
  of the Neumann series saves its operands; under autocast each one reads a fresh low-precision copy
  of Q (Q is not a leaf, so autocast's cast cache does not hold it); `linalg.solve` saves I + Q, its
  LU factors, the pivots and the result;
- the einsum's bmm: the input's copy (x32, or its autocast copy) for R's gradient, and R (or its
  autocast copy) when the input needs a gradient.
The einsum's output, its contiguous copy (the reshape of a permuted result) and the two dtype casts
are working tensors of the forward, freed before the next layer runs.

`module_dropout` builds a `MultiplicativeDropoutLayer` that peft 0.21's `Linear.forward` never calls,
and `coft`'s projection runs under `no_grad`: neither saves anything. The triangle's int64 row and
column indices, buffers of each rotation module, are the method's `MemoryTerms.buffer_bytes`.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from peftplan.replay.symbolic import Sym, const
from peftplan.replay.terms import AdapterKind, LinearAdapter

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops

PIVOT_BYTES = 4  # linalg.solve's int32 pivots


def block_geometry(lin: LinearInfo, adapter: LinearAdapter) -> tuple[int, int, int]:
    """(blocks applied, block size, blocks stored): `adapter.rank` holds the blocks peft applies, and its one
    tensor is (blocks stored, b·(b-1)/2) (one stored block when they share it)."""
    blocks = adapter.rank
    return blocks, lin.in_features // blocks, adapter.tensors[0][0]


class OftKind(AdapterKind):
    """A block-diagonal rotation of the input; `neumann_terms` is 0 for the exact Cayley transform."""

    name = "oft"
    prior = 0.95
    # mixed_batches None: a rotation per task folded into the weights; no serving engine batches them.
    scales_input = True

    def __init__(self, neumann_terms: int) -> None:
        self.neumann_terms = neumann_terms

    def replay_input(self, ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
        adapter = ops.r.adapter(lin.name)
        assert adapter is not None and adapter.kind is self
        blocks, size, stored = block_geometry(lin, adapter)
        itemsize = ops.r.adapter_itemsize
        rotation = self._rotation(ops, stored, size, itemsize)
        applied = blocks * size * size
        if stored != blocks:  # block_share: R.repeat(blocks, 1, 1)
            rotation = ops.fresh(const(applied), itemsize, True)
        x_cast = ops.cast(x, itemsize)
        # einsum -> bmm over the blocks: autocast reads low-precision copies of both operands.
        rotated = ops.matmul_sym(x_cast, rotation, lin.in_features)
        contiguous = ops.pointwise(rotated)  # reshape of the permuted bmm output: a copy
        back = ops.cast(contiguous, x_cast.itemsize)  # `.to(required_dtype)`
        ops.g.live(*ops.held, x, x_cast, rotated, contiguous, back)
        return ops.cast(back, x.itemsize)  # `base_layer(x.to(previous_dtype))`

    def _rotation(self, ops: Ops, stored: int, size: int, itemsize: int) -> Sym:
        """R from the stored triangles (trainable): what its construction saves, and R itself."""
        numel = const(stored * size * size)
        skew = ops.fresh(numel, itemsize, True)  # zeros, index_put of the triangle, minus its transpose
        if not self.neumann_terms:  # torch.linalg.solve(I + Q, I - Q, left=False), outside autocast
            plus = ops.fresh(numel, itemsize, True)
            ops.fresh(numel, itemsize, True)  # I - Q: read by the solve, not saved
            lu = ops.fresh(numel, itemsize, False)
            pivots = ops.fresh(const(stored * size), PIVOT_BYTES, False)
            result = ops.fresh(numel, itemsize, True)
            ops.g.save(plus, lu, pivots, result)
            return result
        terms = self.neumann_terms
        if terms > 2:
            power = skew
            for _ in range(2 + max(0, terms - 4)):  # Q·Q, then the higher powers, each a bmm by Q
                left = ops.autocast_in(power)
                right = ops.autocast_in(skew)
                ops.g.save(left, right)
                power = ops.fresh(numel, ops.r.low or itemsize, True)
        # R = I + 2Q + ... accumulates in place in an fp32 identity (nb, b, b).
        return ops.fresh(numel, itemsize, terms > 1)

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        return result  # the rotation was applied to the input

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        # x · R, block by block: b multiply-adds per input feature; backward: the input's and R's gradients.
        _, size, _ = block_geometry(lin, adapter)
        return (2.0 + 4.0 * train) * lin.in_features * size

    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        # peft's merge builds the dense block-diagonal (in x in) matrix and multiplies the whole weight by it.
        _, size, stored = block_geometry(lin, adapter)
        build = (self.neumann_terms or 3) * 2.0 * stored * size**3  # the rotation: bmms, or the solve
        return 2.0 * lin.in_features * lin.in_features * lin.out_features + build


@cache
def oft_kind(neumann_terms: int) -> OftKind:
    """The OFT kind for a parameterization (one instance per setting, so equal adapters replay alike)."""
    return OftKind(neumann_terms)
