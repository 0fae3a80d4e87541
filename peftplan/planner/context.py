"""TrainContext and MemoryBreakdown: the inputs and the output shape shared by both memory engines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Dtype = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw-fp32", "adamw8bit", "paged-adamw8bit", "sgd", "sgd-momentum", "adafactor"]
Attention = Literal["sdpa", "flash", "eager"]
Shard = Literal["none", "fsdp"]
Device = Literal["cuda", "cpu"]

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class TrainContext:
    """One training step's setting: what the memory of a step depends on besides model and method."""

    seq_len: int = 2048
    batch_size: int = 1
    grad_checkpointing: bool = False
    optimizer: Optimizer = "adamw"
    dtype: Dtype = "bf16"
    attention: Attention = "sdpa"
    gpus: int = 1
    shard: Shard = "none"
    # Whose kernels and autocast rules to model: "cuda" (the default; what a GPU allocates) or "cpu"
    # (what a CPU run or a trace under CPU dispatch allocates: dropout keeps float masks, SDPA with
    # dropout falls back to the math kernel, LayerNorm stays in the autocast dtype).
    device: Device = "cuda"

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def tokens(self) -> int:
        return self.seq_len * self.batch_size


@dataclass
class MemoryBreakdown:
    """Bytes of one steady-state training step at its peak (see DESIGN.md's contract).

    The component lines are the parts of `peak_allocated` at the moment of the peak. `reserved`
    estimates the caching allocator's reserve; `overhead` is CUDA context and workspaces; `total`
    (= reserved + overhead) is what the device shows in use and what `fits` is judged on.
    """

    weights: int = 0
    quant_constants: int = 0
    adapter: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    logits: int = 0
    overhead: int = 0
    peak_allocated: int = 0
    reserved: int = 0
    total: int = 0
    extra: dict[str, int] = field(default_factory=dict)  # engine-specific detail, not part of the contract

    COMPONENTS = ("weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits")

    def component_sum(self) -> int:
        return sum(getattr(self, name) for name in self.COMPONENTS)

    def to_dict(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("extra")
        return data
