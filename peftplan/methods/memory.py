"""What a method changes in a training step's memory, as plain data the planner prices.

Each method returns `MemoryTerms` from `Method.memory_terms(spec, cfg)`: which base parameters train,
the parameters it adds, the bitsandbytes storage of the base, and for every adapted Linear the kind
of adapter it wraps around it. The planner (`peftplan.planner`) turns these into bytes; the methods
never import the planner, so the layering of DESIGN.md holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Quant = Literal["none", "nf4", "fp4", "int8"]

Shape = tuple[int, ...]
AdapterKind = Literal["lora", "dora", "ia3_out", "ia3_in", "loha", "lokr", "vera"]
TrainableBase = Literal["none", "all", "biases"]


@dataclass(frozen=True)
class LinearAdapter:
    """The adapter peft wraps around one Linear; `delta_params` is what the adapter holds for it."""

    kind: AdapterKind
    rank: int = 0
    dropout: float = 0.0
    tensors: tuple[Shape, ...] = ()  # shapes of its trainable tensors (optimizers and files are per tensor)
    names: tuple[str, ...] = ()  # the key suffix of each tensor in a saved adapter file

    @property
    def delta_params(self) -> int:
        """Trainable parameters of this adapter."""
        return sum(numel(shape) for shape in self.tensors)


@dataclass(frozen=True)
class MemoryTerms:
    """A method's memory-relevant description (see the module docstring).

    Attributes:
        trainable_base: which of the base model's own parameters train ("all" for full fine-tuning,
            "biases" for BitFit), in the base dtype.
        adapter_params: trainable parameters the method adds; peft keeps them in fp32.
        frozen_adapter_params: non-trainable tensors the method adds (VeRA's shared projections), fp32.
        quant: bitsandbytes storage of the base Linears (none, nf4, fp4, int8).
        linear_adapters: adapted Linear name -> its adapter.
        extra_tensors: trainable tensors the method adds outside `linear_adapters`.
        extra_tokens: virtual tokens prepended to every sequence (prompt tuning).
        prefix_tokens: extra key/value positions in every attention layer (prefix tuning).
        bottleneck: width of the Houlsby adapters placed after `bottleneck_sites`, with
            `bottleneck_activation` inside.
    """

    trainable_base: TrainableBase = "none"
    adapter_params: int = 0
    frozen_adapter_params: int = 0
    quant: Quant = "none"
    linear_adapters: dict[str, LinearAdapter] = field(default_factory=dict)
    extra_tokens: int = 0
    prefix_tokens: int = 0
    bottleneck: int = 0
    bottleneck_sites: tuple[str, ...] = ()
    bottleneck_activation: str = "relu"
    extra_tensors: tuple[Shape, ...] = ()  # shapes of trainable tensors not tied to a Linear
    extra_names: tuple[str, ...] = ()  # their keys in a saved adapter file
    frozen_saved: tuple[tuple[str, Shape], ...] = ()  # frozen tensors a save also writes (VeRA projections)

    def adapter_tensors(self) -> list[Shape]:
        """Shapes of every trainable tensor the method adds."""
        shapes = [shape for adapter in self.linear_adapters.values() for shape in adapter.tensors]
        return shapes + list(self.extra_tensors)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
