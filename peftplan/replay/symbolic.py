"""Symbolic tensors for the analytic memory model: sizes as polynomials in batch and sequence length.

A training step's activation memory is the set of tensors autograd saves for backward. The block
replays in `peftplan.planner.blocks` run the forward pass of a layer op by op on `Sym` tensors and
record, as autograd does, which storages each op saves. Views and no-op casts share their input's
storage, so a tensor saved by several ops is counted once. Sizes are `Poly`s, so one replay prices
every batch size and sequence length.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

CapKind = Literal["min", "row_min", "above", "step", "seq_above", "batch_if_seq_above"]


@dataclass(frozen=True, order=True)
class Cap:
    """A size set by how the batch's N = B·(S + extra) positions compare with a fixed chunk of `limit`:

    - `min`: min(N, limit), one chunk of the flattened batch (a short batch is one smaller chunk);
    - `row_min`: B·min(S + extra, limit), one chunk of every sequence;
    - `above`: N when N > limit, else 0 (a buffer that exists only when there are several chunks);
    - `step`: 1 when N > limit, else 0;
    - `seq_above`, `batch_if_seq_above`: 1, or B, when each sequence is several chunks (S + extra > limit).
    """

    limit: int
    extra: int = 0
    kind: CapKind = "min"

    def at(self, batch: int, seq: int) -> int:
        count = batch * (seq + self.extra)
        if self.kind == "row_min":
            return batch * min(seq + self.extra, self.limit)
        if self.kind == "above":
            return count if count > self.limit else 0
        if self.kind == "step":
            return 1 if count > self.limit else 0
        if self.kind in ("seq_above", "batch_if_seq_above"):
            several = seq + self.extra > self.limit
            return (batch if self.kind == "batch_if_seq_above" else 1) if several else 0
        return min(count, self.limit)


@dataclass(frozen=True)
class Poly:
    """`n·(B·S) + s2·(B·S²) + b·B + s·S + c` for batch size B and sequence length S (bytes or elements),
    plus `k·cap` for each `(cap, k)` of `capped`: sizes of fixed-size chunks, which a short batch caps."""

    n: int = 0
    s2: int = 0
    b: int = 0
    s: int = 0
    c: int = 0
    capped: tuple[tuple[Cap, int], ...] = ()

    def __add__(self, other: Poly) -> Poly:
        return Poly(self.n + other.n, self.s2 + other.s2, self.b + other.b, self.s + other.s, self.c + other.c,
                    _merge(self.capped, other.capped, 1))

    def __sub__(self, other: Poly) -> Poly:
        return Poly(self.n - other.n, self.s2 - other.s2, self.b - other.b, self.s - other.s, self.c - other.c,
                    _merge(self.capped, other.capped, -1))

    def __mul__(self, k: int) -> Poly:
        return Poly(self.n * k, self.s2 * k, self.b * k, self.s * k, self.c * k,
                    _merge((), self.capped, k))

    __rmul__ = __mul__

    def at(self, batch: int, seq: int) -> int:
        """The value for batch size `batch` and sequence length `seq`."""
        value = self.n * batch * seq + self.s2 * batch * seq * seq + self.b * batch + self.s * seq + self.c
        if self.capped:  # most sizes have no capped terms; skip the generator (priced thousands of times a plan)
            value += sum(k * cap.at(batch, seq) for cap, k in self.capped)
        return value


def _merge(a: tuple[tuple[Cap, int], ...], b: tuple[tuple[Cap, int], ...], sign: int) -> tuple[tuple[Cap, int], ...]:
    """`a + sign·b` of capped terms, canonical (sorted, no zero coefficients)."""
    if not b:
        return a
    out = dict(a)
    for cap, k in b:
        out[cap] = out.get(cap, 0) + sign * k
    return tuple(sorted((cap, k) for cap, k in out.items() if k))


def chunked(width: int, limit: int, extra: int = 0, *, kind: CapKind = "min") -> Poly:
    """`width` times the `Cap` of a chunk of `limit` positions (elements of a chunk of that width, or of a
    buffer that only several chunks need)."""
    return Poly(capped=((Cap(limit, extra, kind), width),)) if width else Poly()


ZERO = Poly()


def tokens(width: int, extra: int = 0) -> Poly:
    """Elements of a (B, S + extra, width) tensor."""
    return Poly(n=width, b=width * extra)


def const(value: int) -> Poly:
    return Poly(c=value)


def positions(width: int, extra: int = 0) -> Poly:
    """Elements of a (1, S + extra, width) tensor (shared by the whole batch)."""
    return Poly(s=width, c=width * extra)


_ids = itertools.count(1)


def new_storage() -> int:
    return next(_ids)


@dataclass(frozen=True)
class Sym:
    """A symbolic tensor: element count and size, whether it requires grad, and the storage it lives in.

    `storage_bytes` is the size of the whole storage (a view reports its base's storage).
    """

    numel: Poly
    itemsize: int
    grad: bool
    storage: int
    storage_bytes: Poly

    @staticmethod
    def fresh(numel: Poly, itemsize: int, grad: bool) -> Sym:
        return Sym(numel, itemsize, grad, new_storage(), numel * itemsize)

    def view(self, numel: Poly | None = None, *, grad: bool | None = None) -> Sym:
        """A view (same storage), optionally of a different shape."""
        return Sym(numel if numel is not None else self.numel, self.itemsize,
                   self.grad if grad is None else grad, self.storage, self.storage_bytes)


class Graph:
    """The storages autograd saves while blocks are replayed, plus moments with extra temporaries.

    `saved` maps storage id -> bytes. `moments` holds totals at moments when temporaries are alive
    on top of what is saved so far (e.g. a dequantized weight): each is a peak candidate.
    """

    def __init__(self, external: frozenset[int] = frozenset()) -> None:
        self.saved: dict[int, Poly] = {}
        self.moments: list[Poly] = []
        self.forward_live = ZERO  # bytes alive until the forward ends, not saved (e.g. KV caches)
        self.external = external  # storages owned by an enclosing graph (shared rope tables, masks)
        self.used_external: set[int] = set()
        self.live_moments: list[tuple[Poly, Poly]] = []
        self.recomputed_live: list[tuple[Poly, Poly]] = []  # those a checkpointed block's recomputation reaches
        self.largest = ZERO  # the largest tensor created (its gradient is a backward temporary)
        self.backward_extra = ZERO  # the largest temporaries one module's backward needs on its own
        self.kept: dict[int, Poly] = {}  # saved storages backward never releases (see `keep`)
        self.backward_options: list[Poly] = []  # whole sets of backward temporaries (see `backward_option`)
        self._backward_moments: list[tuple[Poly, Poly]] = []  # (temporaries, saved so far): `backward_moment`
        self.pending = ZERO  # gradients alive through a checkpointed block's recomputation (see `pending_gradient`)

    def save(self, *tensors: Sym | None) -> None:
        for t in tensors:
            if t is None:
                continue
            if t.storage in self.external:
                self.used_external.add(t.storage)
            else:
                self.saved[t.storage] = t.storage_bytes

    def keep(self, *tensors: Sym) -> None:
        """Save tensors an autograd Function holds as a plain attribute (bitsandbytes' `ctx.tensors`): backward
        never releases them, so they live as long as the graph itself."""
        self.save(*tensors)
        for t in tensors:
            if t.storage not in self.external:
                self.kept[t.storage] = t.storage_bytes

    def kept_total(self) -> Poly:
        out = ZERO
        for p in self.kept.values():
            out = out + p
        return out

    def transient(self, extra: Poly) -> None:
        """Record a moment when `extra` bytes beyond the saved set are alive."""
        self.moments.append(self.total() + extra)

    def live(self, *tensors: Sym, recomputed: bool = True) -> None:
        """Record a moment when `tensors` are alive: (saved so far + those not saved, all of them).
        `recomputed` False: a moment after the block's last saved tensor, which a checkpointed block's
        recomputation never reaches (it stops once that tensor is saved again: torch 2.13
        torch/utils/checkpoint.py, non-reentrant early stop, on by default)."""
        unsaved = ZERO
        everything = ZERO
        seen: set[int] = set()
        for t in tensors:
            if t.storage in seen or t.storage in self.external:
                continue
            seen.add(t.storage)
            everything = everything + t.storage_bytes
            if t.storage not in self.saved:
                unsaved = unsaved + t.storage_bytes
        self.live_moments.append((self.total() + unsaved, everything))
        if recomputed:
            self.recomputed_live.append(self.live_moments[-1])

    def created(self, t: Sym) -> Sym:
        """Note a new tensor (keeps `largest` current); returns it."""
        if t.storage_bytes.at(1, 1024) > self.largest.at(1, 1024):
            self.largest = t.storage_bytes
        return t

    def backward_temporary(self, extra: Poly) -> None:
        """A module whose backward briefly needs `extra` bytes (e.g. LoHa rebuilding its factors)."""
        if extra.at(1, 1024) > self.backward_extra.at(1, 1024):
            self.backward_extra = extra

    def backward_option(self, total: Poly) -> None:
        """A set of gradient temporaries the block's backward holds at once at some moment, in total (not on
        top of the two largest tensors' gradients); the block prices the largest at the step's shape."""
        self.backward_options.append(total)

    def backward_moment(self, temporaries: Poly) -> None:
        """Gradient temporaries of the module replayed now, alive at its backward. That runs after the later
        modules' backward has released what they saved, so only what is saved so far is alive beside them."""
        self._backward_moments.append((temporaries, self.total()))

    def pending_gradient(self, extra: Poly) -> None:
        """A gradient the block's backward makes before it first reads a saved tensor: with checkpointing, the
        recomputation starts at that read, so the gradient is alive through the whole recomputed forward."""
        self.pending = self.pending + extra

    def backward_totals(self) -> list[Poly]:
        """The backward options, with each `backward_moment` expressed as one (on top of the whole saved set,
        less what the later modules saved)."""
        end = self.total()
        return [*self.backward_options, *(temps + so_far - end for temps, so_far in self._backward_moments)]

    def total(self) -> Poly:
        out = ZERO
        for p in self.saved.values():
            out = out + p
        return out
