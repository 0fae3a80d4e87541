"""What a method changes in a training step's memory, as data the planner prices.

Each method returns `MemoryTerms` from `Method.memory_terms(spec, cfg)`: which base parameters train,
the parameters it adds, the bitsandbytes storage of the base, and for every adapted Linear the
`AdapterKind` it wraps around it. An adapter kind is owned by its method's package
(`methods/<name>/replay.py`) and says how its forward replays, what it costs in FLOPs and how it
serves; the planner calls it and never compares a method's or a kind's name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar, Literal

from peftplan.replay.symbolic import Sym, const

if TYPE_CHECKING:
    from peftplan.models.spec import LinearInfo
    from peftplan.replay.ops import Ops

Quant = Literal["none", "nf4", "fp4", "int8"]

Shape = tuple[int, ...]
TrainableBase = Literal["none", "all", "biases"]


class AdapterKind(ABC):
    """One kind of adapter peft wraps around a Linear (LoRA's B·A, IA3's scale, ...).

    Attributes:
        name: shown in plans and traces.
        rank_meaning: what the method's `rank` knob sets for this kind (None: it has no rank).
        low_rank: a B·A update whose quality grows with its rank (the decision's rank prior).
        prior: the decision's quality prior for this kind, relative to LoRA's 1.0.
        mixed_batches: how one forward serves requests of different tasks (None: it cannot).
        vllm: vLLM's multi-LoRA serving runs it (ranks up to 512).
        scales_input: it acts on the Linear's input, before the base matmul (IA3 on feed-forward).
    """

    name: ClassVar[str]
    rank_meaning: ClassVar[str | None] = None
    low_rank: ClassVar[bool] = False
    prior: ClassVar[float] = 0.9
    mixed_batches: ClassVar[str | None] = None
    vllm: ClassVar[bool] = False
    scales_input: ClassVar[bool] = False

    def __repr__(self) -> str:
        return self.name

    def replay_input(self, ops: Ops, x: Sym, lin: LinearInfo) -> Sym:
        """The Linear's input as the base layer reads it (only kinds with `scales_input` change it)."""
        return x

    @abstractmethod
    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        """The module's output, given its input `x` and the base layer's output `result`."""

    @abstractmethod
    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        """FLOPs per token this adapter adds: forward and backward when `train`, else forward only."""

    @abstractmethod
    def merge_flops(self, lin: LinearInfo, adapter: LinearAdapter) -> float:
        """FLOPs to build the delta weight once (a merge or unmerge)."""

    def rank_cap(self, linears: list[LinearInfo], settings: object) -> int:
        """The largest rank that still means something on `linears` (the method's config is `settings`)."""
        return max(1, min(min(lin.in_features, lin.out_features) for lin in linears))


class DenseDeltaKind(AdapterKind):
    """An adapter that builds a dense delta weight from its factors every forward, then runs `x @ delta`.

    Subclasses say what building it holds (`delta_bytes`) and what building it once costs (`merge_flops`).
    """

    prior = 0.95
    # mixed_batches None: a dense delta weight per task.

    @abstractmethod
    def delta_bytes(self, ops: Ops, numel: int) -> tuple[int, int, int]:
        """(the delta's itemsize, the bytes building it briefly holds, its backward's temporaries)."""

    def replay(self, ops: Ops, x: Sym, result: Sym, lin: LinearInfo, adapter: LinearAdapter) -> Sym:
        numel = lin.in_features * lin.out_features
        size, build, backward = self.delta_bytes(ops, numel)
        ops.g.transient(const(build))
        ops.g.backward_temporary(const(backward))
        delta = Sym.fresh(const(numel), size, True)
        out = ops.matmul_sym(ops.cast(x, size), delta, lin.out_features)
        return ops.cast(ops.add(result, out), result.itemsize)

    def flops(self, lin: LinearInfo, adapter: LinearAdapter, *, train: bool) -> float:
        # x @ delta_W: a dense matmul, its input and weight gradients.
        return (2.0 + 4.0 * train) * lin.in_features * lin.out_features


@dataclass(frozen=True)
class LinearAdapter:
    """The adapter peft wraps around one Linear; `delta_params` is what the adapter holds for it."""

    kind: AdapterKind
    rank: int = 0
    dropout: float = 0.0
    tensors: tuple[Shape, ...] = ()  # shapes of its trainable tensors (optimizers and files are per tensor)
    names: tuple[str, ...] = ()  # the key suffix of each tensor in a saved adapter file

    @cached_property  # frozen, and read for every adapter of every candidate
    def delta_params(self) -> int:
        """Trainable parameters of this adapter."""
        return sum(numel(shape) for shape in self.tensors)


class ParamAdapterKind(ABC):
    """One kind of adapter peft puts on a bare parameter (`target_parameters`: fused MoE experts, routers).

    Attributes:
        name: shown in plans and traces.
    """

    name: ClassVar[str]

    def __repr__(self) -> str:
        return self.name

    @abstractmethod
    def replay_weight(self, ops: Ops, adapter: ParamAdapter) -> Sym | None:
        """The weight the module reads in the forward (None: the parameter itself, unchanged)."""

    @abstractmethod
    def flops(self, adapter: ParamAdapter, *, train: bool, tokens: int, active: float) -> float:
        """FLOPs per token this adapter adds, in a step of `tokens` tokens; `active` is the share of the
        parameter one token multiplies by (top_k / E for routed experts)."""


@dataclass(frozen=True)
class ParamAdapter:
    """The adapter peft puts on one parameter [E, d1, d2] (or [out, in], E = 1): `param` is its full name.

    `in_features` and `out_features` are peft's reading of the parameter (lora_A is [r·E, in]).
    """

    kind: ParamAdapterKind
    param: str
    shape: Shape
    rank: int
    experts: int
    in_features: int
    out_features: int
    tensors: tuple[Shape, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def delta_params(self) -> int:
        return sum(numel(shape) for shape in self.tensors)

    @property
    def weight_numel(self) -> int:
        return numel(self.shape)


@dataclass(frozen=True)
class MemoryTerms:
    """A method's memory-relevant description (see the module docstring).

    Attributes:
        trainable_base: which of the base model's own parameters train ("all" for full fine-tuning,
            "biases" for BitFit), in the base dtype.
        adapter_params: trainable parameters the method adds; peft keeps them in fp32.
        frozen_adapter_params: non-trainable tensors the method adds (VeRA's shared projections), fp32.
        buffer_bytes: bytes of integer buffers the method adds (OFT's triangle indices), which no
            dtype setting casts.
        quant: bitsandbytes storage of the base Linears (none, nf4, fp4, int8).
        linear_adapters: adapted Linear name -> its adapter.
        param_adapters: adapted parameter name (fused experts, routers) -> its adapter.
        extra_tensors: trainable tensors the method adds outside `linear_adapters`.
        extra_tokens: virtual tokens prepended to every sequence (prompt tuning).
        prefix_tokens: extra key/value positions in every attention layer (prefix tuning).
        bottleneck: width of the Houlsby adapters placed after `bottleneck_sites`, with
            `bottleneck_activation` inside.
        method_state: elements the method keeps between optimizer steps outside the optimizer, in the
            adapters' dtype (AdaLoRA's importance scores), made by `Method.after_optimizer_step`.
        loss_terms: adapter tensors (by their `LinearAdapter.names` suffix) that a term the method adds to
            the model's loss reads directly (AdaLoRA's orthogonal regularisation). Autograd runs that
            term's backward first, so their gradients exist through the model's whole backward.
    """

    trainable_base: TrainableBase = "none"
    adapter_params: int = 0
    frozen_adapter_params: int = 0
    buffer_bytes: int = 0
    quant: Quant = "none"
    linear_adapters: dict[str, LinearAdapter] = field(default_factory=dict)
    param_adapters: dict[str, ParamAdapter] = field(default_factory=dict)
    extra_tokens: int = 0
    prefix_tokens: int = 0
    bottleneck: int = 0
    bottleneck_sites: tuple[str, ...] = ()
    bottleneck_activation: str = "relu"
    extra_tensors: tuple[Shape, ...] = ()  # shapes of trainable tensors not tied to a Linear
    extra_names: tuple[str, ...] = ()  # their keys in a saved adapter file
    frozen_saved: tuple[tuple[str, Shape], ...] = ()  # frozen tensors a save also writes (VeRA projections)
    notes: tuple[str, ...] = ()  # what the plan should say about how the method adapts this model
    method_state: int = 0
    loss_terms: frozenset[str] = frozenset()

    def adapter_tensors(self) -> list[Shape]:
        """Shapes of every trainable tensor the method adds."""
        shapes = [shape for adapter in self.linear_adapters.values() for shape in adapter.tensors]
        shapes += [shape for adapter in self.param_adapters.values() for shape in adapter.tensors]
        return shapes + list(self.extra_tensors)


def numel(shape: Shape) -> int:
    return math.prod(shape)
