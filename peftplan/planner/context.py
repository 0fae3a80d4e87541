"""TrainContext and MemoryBreakdown: the inputs and the output shape shared by both memory engines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Dtype = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw-fp32", "adamw8bit", "paged-adamw8bit", "paged-adamw", "sgd", "sgd-momentum",
                    "adafactor"]
Attention = Literal["sdpa", "flash", "eager"]
Shard = Literal["none", "fsdp", "zero2", "zero3"]
Device = Literal["cuda", "cpu"]

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}
DEEPSPEED_SHARDS = ("zero2", "zero3")
# What DeepSpeed's engine runs whatever the stack's default (see `TrainContext.__post_init__`).
DEEPSPEED_KNOBS: dict[str, str] = {"precision": "pure", "adapter_dtype": "dtype", "kbit_prep": "none"}


def deepspeed_overrides(name: str, value: object) -> bool:
    """Whether DeepSpeed's engine undoes knob `name` set to `value` (only peft's fp32 upcast among k-bit preps)."""
    engine = DEEPSPEED_KNOBS.get(name)
    return engine is not None and value != engine and (name != "kbit_prep" or value == "peft")


INDEX_BYTES = 8  # int64: token ids, labels, index tensors


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
    # The training stack's memory techniques (planner/stacks.py; `stack` names whose defaults they are).
    stack: str = "hf"
    loss: str = "full"  # full | chunked | fused
    loss_chunks: int = 8
    loss_chunk_tokens: int = 0  # chunks of this many tokens instead of `loss_chunks` of them
    loss_recompute: bool = False  # each loss chunk is checkpointed (TRL)
    loss_fp32: bool = True  # the loss upcasts logits to fp32
    legacy_loss: bool = False  # transformers < 4.45: fp32 logits in the model and a shifted copy
    compile_loss: bool = False  # inductor saves the chunk's logits and two fp32 values per token
    keep_logits: bool = False  # the loop holds the logits through backward
    precision: str = "mixed"  # mixed (autocast) | pure (all in dtype, no autocast)
    adapter_dtype: str = "fp32"  # fp32 (peft) | dtype
    kbit_prep: str = "peft"  # peft | none | torchtune
    ckpt_offload: bool = False  # checkpointed block inputs live on the host (Unsloth)
    offload_activations: bool = False  # every saved activation lives on the host (save_on_cpu)
    optimizer_in_bwd: bool = False  # each gradient is stepped and freed as backward makes it
    optimizer_fused: bool = False  # torch AdamW's fused kernel: the step allocates nothing
    kernels: str = "torch"  # torch | unsloth (its fused Triton kernels for Llama-style blocks)
    packing: bool = False
    bnb_keeps_input: bool = False  # bitsandbytes < 0.43.2: a 4-bit Linear keeps its input as long as the graph
    bnb_fp16_state: bool = False  # 4-bit weights quantized from fp16: dequantized to fp16, then cast
    model_code: str = "transformers"  # transformers | litgpt (litgpt's own GPT blocks, planner/blocks.py)
    output_fp32: bool = False  # the wrapper casts the model's output (the logits) to fp32 (Lightning Fabric)
    fsdp_flat_grads: bool = False  # FSDP1 use_orig_params=True: a unit's gradient spans its whole FlatParameter
    fsdp_no_sync: bool = False  # FSDP gradient accumulation under no_sync(): unsharded gradients all step
    fsdp_root_whole: bool = True  # FSDP's root unit (embeddings, output layer) stays gathered fwd -> bwd
    cpu_offload: bool = False  # sharded states (and, for FSDP/ZeRO-3, parameters) live on the host
    pinned: frozenset[str] = frozenset()  # knobs (and "optimizer") the user set: stack rules keep them
    # A VLM's images (planner/vision.py): per example, `images` images of `image_patches` vision-tower
    # patches each, `image_tokens` language-model tokens each (part of `seq_len`). 0: a text-only step.
    images: int = 0
    image_patches: int = 0
    image_tokens: int = 0
    train_vision: bool = False  # the vision tower and its projector train (else frozen)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "gpus", "loss_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.deepspeed:
            # DeepSpeed's bf16/fp16 engine casts the whole module, adapters and peft's fp32-upcast norms,
            # embeddings and head included, to the training dtype (`self.module.bfloat16()`, floating-point
            # tensors only, deepspeed/runtime/engine.py l.1224-1231 @38327e07f) and accelerate runs it without
            # torch autocast (`native_amp` stays off under DeepSpeed, accelerator.py l.563-590 @16cb6eb8): the
            # step is `pure`, whatever the stack's default. The fp32 master weights live in the ZeRO
            # optimizer's partitions (planner/memory.py `price`).
            for name, value in DEEPSPEED_KNOBS.items():
                if name != "kbit_prep" or self.kbit_prep == "peft":
                    object.__setattr__(self, name, value)

    @property
    def tokens(self) -> int:
        return self.seq_len * self.batch_size

    @property
    def checkpointing(self) -> str:
        """none, recompute or offload (the knob's name for `grad_checkpointing` and `ckpt_offload`)."""
        if not self.grad_checkpointing:
            return "none"
        return "offload" if self.ckpt_offload else "recompute"

    @property
    def autocast(self) -> bool:
        """Whether the step runs under autocast (16-bit mixed precision)."""
        return self.dtype != "fp32" and self.precision == "mixed"

    @property
    def adapter_itemsize(self) -> int:
        """Bytes per adapter element: peft's fp32, or the training dtype."""
        return DTYPE_BYTES[self.dtype] if self.adapter_dtype == "dtype" else 4

    @property
    def deepspeed(self) -> bool:
        """Whether DeepSpeed's ZeRO (stage 2 or 3) runs the step (on one GPU too: ZeRO-Offload)."""
        return self.shard in DEEPSPEED_SHARDS

    @property
    def sharded(self) -> bool:
        """Whether weights are sharded across GPUs (FSDP, ZeRO-3)."""
        return self.gpus > 1 and self.shard in ("fsdp", "zero3")

    def step_setting(self) -> dict[str, object]:
        """The step's shape and precision: the first keys of plan's and trace's JSON `training`."""
        return {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "grad_checkpointing": self.grad_checkpointing,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "attention": self.attention,
        }

    def image_setting(self) -> dict[str, object]:
        """The step's images (plan's JSON `training` adds these for a VLM step with images)."""
        return {"images_per_example": self.images, "image_tokens": self.image_tokens,
                "image_patches": self.image_patches, "train_vision": self.train_vision}

    def knobs(self) -> dict[str, object]:
        """The stack and its knobs as priced (the plan JSON's `training` adds these)."""
        from peftplan.planner.stacks import KNOB_NAMES

        values: dict[str, object] = {"stack": self.stack}
        for name in KNOB_NAMES:
            values[name] = self.checkpointing if name == "checkpointing" else getattr(self, name)
        values["cpu_offload"] = self.cpu_offload
        return values


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
    # Outside the device's allocated bytes: paged optimizer states (unified memory, which
    # `max_memory_allocated` never counts) and what offloading keeps in host RAM.
    paged: int = 0
    host: int = 0
    extra: dict[str, int] = field(default_factory=dict)  # engine-specific detail, not part of the contract

    COMPONENTS = ("weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits")

    def component_sum(self) -> int:
        return sum(getattr(self, name) for name in self.COMPONENTS)

    def to_dict(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("extra")
        return data
