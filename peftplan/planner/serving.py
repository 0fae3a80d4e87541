"""Serving and task switching, priced: what one serving GPU holds, what a switch costs, what is stored.

Three ways to serve `tasks` adapted tasks (`--switching`):
- **merge**: one merged copy per task (full fine-tuning: its own model). A switch loads that copy
  from disk and over PCIe; nothing runs unmerged. A 4/8-bit base is merged by peft's
  dequantize-merge-requantize, so the copy keeps the base's storage. Methods that cannot merge
  (prompt and prefix tuning, bottleneck adapters) run unmerged on the shared base.
- **hot-swap**: the base stays on the GPU with one adapter; a switch loads the next adapter from disk,
  copies it over PCIe, unmerges the previous one and merges the next (memory-bound passes over the
  adapted weights, or their FLOPs where a dense delta is built), then serves merged.
- **multi-tenant**, the vLLM way (checked against vLLM's code, cited in docs/planner.md):
  LoRA adapters get GPU slots preallocated at `--max-lora-rank` for every wrapped module times
  `--max-loras` (`vllm/lora/layers/base_linear.py: create_lora_weights`: per slice an A of
  max_loras x max_lora_rank x input and a B of max_loras x output x max_lora_rank, in the model's
  dtype); every supported module is wrapped unless `--lora-target-modules` narrows it
  (`vllm/lora/model_manager.py: _create_lora_modules`), and packed modules (q/k/v, gate/up) get a
  slot for every slice; the other adapters wait in a host LRU cache of `--max-cpu-loras`. Unmerged
  adapters cost FLOPs per token (the punica kernels run at the slot's rank). Methods vLLM does not
  serve keep every task's adapter resident.

Every mode also holds the KV cache of `concurrency` sequences of `context` tokens, a prefill chunk's
activations and the CUDA context. With several GPUs in the budget, serving may use tensor
parallelism over the fewest of them that fits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError, UnknownNameError
from peftplan.models.arch import arch_of, block_linears
from peftplan.planner.context import DTYPE_BYTES
from peftplan.planner.memory import CUDA_CONTEXT
from peftplan.planner.storage import DISK_GBS
from peftplan.planner.throughput import adapter_flops, attention_flops, matmul_params
from peftplan.replay.terms import AdapterKind, MemoryTerms, numel

if TYPE_CHECKING:
    from peftplan.budgets.profiles import GpuProfile
    from peftplan.methods.base import Method
    from peftplan.models.spec import LinearInfo, ModelSpec

SWITCHING = ("merge", "hot-swap", "multi-tenant")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py: MaxLoRARanks
TENANTS_IN_FLIGHT = 32  # multi-tenant default: one request per tenant in flight, up to this many
PREFILL_TOKENS = 2048  # a prefill chunk (vLLM's chunked prefill): the serving activations' size

@dataclass(frozen=True)
class ServingNeeds:
    """How the adapted tasks are served (`--tasks`, `--switching`, `--serve-*`)."""

    vram_bytes: int
    gpu: GpuProfile
    tasks: int = 1
    switching: str = "merge"
    context: int | None = None  # tokens per sequence; None: the training sequence length
    concurrency: int | None = None  # sequences in flight; None: the mode's default
    gpus: int = 1  # GPUs tensor parallelism may use

    def resolved_concurrency(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        return min(self.tasks, TENANTS_IN_FLIGHT) if self.switching == "multi-tenant" else 1

    def resolved_context(self, train_seq: int) -> int:
        return self.context if self.context is not None else train_seq

    def to_dict(self, train_seq: int) -> dict[str, Any]:
        return {"tasks": self.tasks, "switching": self.switching, "gpu": self.gpu.key,
                "vram_bytes": self.vram_bytes, "gpus": self.gpus, "context": self.resolved_context(train_seq),
                "concurrency": self.resolved_concurrency()}


def serving_needs(
    *, vram_bytes: int, gpu: GpuProfile, gpus: int = 1, tasks: int = 1, switching: str = "merge",
    serve_gpu: str | None = None, serve_vram: float | None = None, context: int | None = None,
    concurrency: int | None = None, profiles_file: Any = None,
) -> ServingNeeds:
    """ServingNeeds from CLI-style inputs; the serving GPU defaults to the training one.

    Raises:
        BadInputError: a task count below 1, a non-positive serving budget, context or concurrency.
        UnknownNameError: an unknown switching mode or serving GPU (with a did-you-mean).
    """
    import math

    from peftplan.budgets.profiles import GIB, find_gpu

    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise BadInputError(f"--tasks must be at least 1, got {tasks!r}")
    if switching not in SWITCHING:
        raise UnknownNameError("switching mode", switching, SWITCHING, hint=f"Use one of: {', '.join(SWITCHING)}.")
    for name, value in (("--serve-context", context), ("--serve-concurrency", concurrency)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadInputError(f"{name} must be a positive integer, got {value!r}")
    if serve_vram is not None and (not isinstance(serve_vram, int | float) or isinstance(serve_vram, bool)
                                   or not math.isfinite(serve_vram) or serve_vram <= 0):
        raise BadInputError(f"--serve-vram must be a positive number of GiB, got {serve_vram!r}")
    if serve_gpu is not None:
        gpu = find_gpu(serve_gpu, extra=profiles_file)
        vram_bytes = gpu.vram_bytes
    if serve_vram is not None:
        vram_bytes = int(serve_vram * GIB)
    return ServingNeeds(vram_bytes=vram_bytes, gpu=gpu, tasks=tasks, switching=switching, context=context,
                        concurrency=concurrency, gpus=gpus)


@dataclass
class ServingPlan:
    """What serving one configuration costs (bytes are per serving GPU unless named otherwise)."""

    mode: str
    tasks: int
    gpu_bytes: int  # per serving GPU: weights, adapters, KV cache, activations, CUDA context
    fits: bool
    budget_bytes: int
    tensor_parallel: int
    weights_bytes: int  # the base (or merged copy) as served, whole model
    adapter_gpu_bytes: int  # adapters or vLLM slots on the GPU, whole model
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    resident_adapters: int  # adapters on the GPU at once
    host_adapters: int  # adapters waiting in host RAM (vLLM's CPU LRU cache)
    host_bytes: int
    storage_bytes: int  # disk for every task
    full_copies_bytes: int  # disk for one full model per task
    swap_seconds: float  # switching to another task
    merge_seconds: float  # one merge (or unmerge) pass
    load_seconds: float  # a first load from disk to the GPU (adapter, or the model)
    extra_flops_pct: float  # per token while serving, against the base's forward
    mixed_batches: bool
    mixed_how: str
    context: int
    concurrency: int
    flags: list[str] | None = None  # the serve command's flags (vLLM), or None
    notes: list[str] = field(default_factory=list)
    max_loras: int | None = None
    max_lora_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kv_bytes_per_token(spec: ModelSpec, dtype: str) -> int:
    """Key and value bytes one token keeps in every layer (0 for encoders, which generate nothing)."""
    arch = arch_of(spec)
    if not arch.causal:
        return 0
    return 2 * arch.layers * arch.kv_width * DTYPE_BYTES[dtype]


def served_weight_bytes(spec: ModelSpec, terms: MemoryTerms, dtype: str) -> int:
    """The base as a server loads it: in `dtype`, or packed by bitsandbytes (the rest in `dtype`)."""
    from peftplan.planner.weights import quantized_totals

    size = DTYPE_BYTES[dtype]
    if terms.quant == "none":
        return spec.total_params * size
    data, constants, packed = quantized_totals(spec, terms.quant)
    return data + constants + (spec.total_params - packed) * size


def _task_params(spec: ModelSpec, terms: MemoryTerms) -> int:
    """Parameters one task's adapter holds (BitFit: its biases); shared frozen tensors not included."""
    params = terms.adapter_params
    if terms.trainable_base == "biases":
        params += sum(p.numel for p in spec.params if p.tied_to is None and p.name.rsplit(".", 1)[-1] == "bias")
    return params


def _kinds(terms: MemoryTerms) -> set[AdapterKind]:
    return {adapter.kind for adapter in terms.linear_adapters.values()}


def _vllm_kinds(terms: MemoryTerms) -> bool:
    """Every adapter is of a kind vLLM's multi-LoRA serving runs."""
    kinds = _kinds(terms)
    return bool(kinds) and all(kind.vllm for kind in kinds)


def mixed_batches(terms: MemoryTerms) -> tuple[bool, str]:
    """Whether one forward pass can serve requests of different tasks, and how (or why not)."""
    if terms.trainable_base == "all":
        return False, "each task is its own model: a forward serves one task"
    if terms.trainable_base == "biases":
        return False, "per-task biases live in the weights: a forward serves one task"
    if terms.extra_tokens:
        return True, "each request carries its task's virtual tokens (prompt tuning)"
    if terms.prefix_tokens:
        return True, "each request carries its task's prefix keys and values"
    if terms.bottleneck:
        return False, "bottleneck adapters are extra layers per task: no batched kernel"
    kinds = _kinds(terms)
    hows = [kind.mixed_batches for kind in kinds]
    if kinds and all(hows):
        return True, str(hows[0])
    return False, "no serving kernel batches these adapters across tasks: a forward serves one task"


def _vllm_servable(terms: MemoryTerms) -> bool:
    """LoRA adapters (rank <= 512) on Linears only: what vLLM's multi-LoRA serving runs."""
    return (_vllm_kinds(terms) and terms.trainable_base == "none" and not terms.extra_tensors
            and not terms.extra_tokens and not terms.prefix_tokens and not terms.bottleneck
            and max(a.rank for a in terms.linear_adapters.values()) <= VLLM_RANKS[-1])


def vllm_slot_linears(spec: ModelSpec, terms: MemoryTerms) -> list[LinearInfo]:
    """The Linears vLLM allocates LoRA slots for: every slice of a packed module (q/k/v, gate/up)
    that holds a targeted Linear, and every other targeted Linear."""
    targeted = set(terms.linear_adapters)
    slots: list[LinearInfo] = []
    seen: set[str] = set()
    for index in range(spec.num_layers):
        block = block_linears(spec, index)
        groups = [block.attn_in, (block.attn_out,), block.mlp_in, (block.mlp_out,), *((lin,) for lin in block.other)]
        for group in groups:
            members = [lin for lin in group if lin is not None]
            if any(lin.name in targeted for lin in members):
                slots += members
                seen.update(lin.name for lin in members)
    linears = spec.linears_by_name
    slots += [linears[name] for name in sorted(targeted - seen) if name in linears]
    return slots


def merge_seconds(spec: ModelSpec, terms: MemoryTerms, dtype: str, gpu: GpuProfile) -> float:
    """One merge (or unmerge) pass: each adapted weight read and written, and the delta's FLOPs."""
    linears = spec.linears_by_name
    size = DTYPE_BYTES[dtype]
    seconds = 0.0
    for name, adapter in terms.linear_adapters.items():
        lin = linears.get(name)
        if lin is None:
            continue
        weight = lin.in_features * lin.out_features
        flops = adapter.kind.merge_flops(lin, adapter)
        seconds += max(flops / (gpu.bf16_tflops * 1e12), 2 * weight * size / (gpu.mem_bw_gbs * 1e9))
    return seconds


def _per_token_pct(spec: ModelSpec, terms: MemoryTerms, context: int, extra: float) -> float:
    """`extra` FLOPs per token as a percentage of the base model's forward."""
    arch = arch_of(spec)
    base = 2.0 * matmul_params(spec, arch) + attention_flops(arch, context)
    return round(100.0 * extra / base, 3) if base else 0.0


def _unmerged_pct(spec: ModelSpec, terms: MemoryTerms, context: int) -> float:
    """Per-token cost of running the method unmerged (virtual tokens and extra layers included)."""
    if terms.extra_tokens or terms.prefix_tokens:
        return round(100.0 * (terms.extra_tokens or terms.prefix_tokens) / max(context, 1), 3)
    extra = adapter_flops(spec, terms, forward_only=True, tokens=context)
    if terms.bottleneck:
        extra = 2.0 * sum(numel(shape) for shape in terms.extra_tensors)
    return _per_token_pct(spec, terms, context, extra)


def _vllm_rank(rank: int) -> int:
    return next(r for r in VLLM_RANKS if r >= rank)


def price_serving(
    spec: ModelSpec, method: Method, terms: MemoryTerms, *, adapter_bytes: int, dtype: str, needs: ServingNeeds,
    train_seq: int,
) -> ServingPlan:
    """What serving `needs.tasks` tasks of this configuration costs (see the module docstring)."""
    arch = arch_of(spec)
    size = DTYPE_BYTES[dtype]
    tasks, mode, gpu = needs.tasks, needs.switching, needs.gpu
    context = needs.resolved_context(train_seq)
    concurrency = needs.resolved_concurrency()
    full = terms.trainable_base == "all"
    weights = served_weight_bytes(spec, terms, dtype)
    model_bytes = spec.total_params * size  # one full model on disk (a full fine-tune's copy)
    task_gpu = _task_params(spec, terms) * size  # one task's adapter as the server holds it
    shared = terms.frozen_adapter_params * size  # VeRA's projections, shared by every task
    merge = 0.0 if full or not method.traits.mergeable else merge_seconds(spec, terms, dtype, gpu)
    pcie, disk = gpu.pcie_gbs * 1e9, DISK_GBS * 1e9
    adapter_load = adapter_bytes / disk + task_gpu / pcie
    mixed, how = mixed_batches(terms)
    notes: list[str] = []
    flags: list[str] | None = None
    max_loras: int | None = None
    max_rank: int | None = None
    host_adapters = host_bytes = 0
    unmerged = _unmerged_pct(spec, terms, context)
    storage = model_bytes + tasks * adapter_bytes

    if full:
        storage, load = tasks * model_bytes, model_bytes / disk + model_bytes / pcie
        resident_models = tasks if mode == "multi-tenant" else 1
        adapters_gpu, resident, swap, extra = (resident_models - 1) * weights, resident_models, load, 0.0
        if mode == "multi-tenant":
            swap = 0.0
            notes.append(f"multi-tenant full fine-tuning keeps {tasks} whole models resident")
        mixed, how = False, "each task is its own model: a forward serves one task"
    elif mode == "merge" and method.traits.mergeable:
        # One merged copy per task, stored whole; a switch loads the next copy.
        storage, load = tasks * weights, weights / disk + weights / pcie
        adapters_gpu, resident, swap, extra = 0, 1, load, 0.0
        mixed, how = False, "merged weights serve one task per forward"
        if terms.quant != "none":
            notes.append("merged by dequantize-merge-requantize: each copy keeps the 4/8-bit storage")
    elif mode in ("merge", "hot-swap"):
        load = adapter_load
        adapters_gpu, resident = shared + task_gpu, 1
        extra = 0.0 if method.traits.mergeable else unmerged
        swap = adapter_load + (2 * merge if method.traits.mergeable else 0.0)
        if not method.traits.mergeable:
            notes.append(f"{method.name} cannot be merged; it runs unmerged on the shared base")
        mixed, how = False, "one adapter is loaded at a time: a forward serves one task"
    elif _vllm_servable(terms):
        rank = max(a.rank for a in terms.linear_adapters.values())
        max_rank, max_loras = _vllm_rank(rank), min(tasks, concurrency)
        slot_linears = vllm_slot_linears(spec, terms)
        per_slot = sum(max_rank * (lin.in_features + lin.out_features) for lin in slot_linears) * size
        adapters_gpu, resident = max_loras * per_slot, max_loras
        host_adapters, host_bytes = tasks, tasks * task_gpu
        load = adapter_load
        swap = task_gpu / pcie if tasks > max_loras else 0.0  # from the host cache into a free slot
        punica = 2.0 * max_rank * sum(lin.in_features + lin.out_features for lin in slot_linears)
        extra = _per_token_pct(spec, terms, context, punica)
        flags = ["--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_rank),
                 "--max-cpu-loras", str(tasks), "--max-model-len", str(context), "--max-num-seqs", str(concurrency)]
        all_linear = {lin.name for lin in spec.linears if lin.in_block}
        if {lin.name for lin in slot_linears} != all_linear:
            flags += ["--lora-target-modules", *sorted({spec_leaf(name) for name in terms.linear_adapters})]
        if terms.quant != "none":
            flags += ["--quantization", "bitsandbytes"]
        if max_rank != rank:
            notes.append(f"vLLM's slots hold rank {max_rank} (its nearest --max-lora-rank at or above {rank})")
    else:
        # Every task's adapter resident (peft's multi-adapter model); vLLM does not serve these.
        load = adapter_load
        adapters_gpu, resident, swap, extra = shared + tasks * task_gpu, tasks, 0.0, unmerged
        reason = "LoRA above rank 512" if _vllm_kinds(terms) else "this method"
        notes.append(f"vLLM's multi-LoRA serving does not run {reason}: every task's adapter stays resident")

    virtual = terms.extra_tokens + terms.prefix_tokens
    kv = concurrency * (context + virtual) * kv_bytes_per_token(spec, dtype)
    in_flight = min(concurrency * (context + virtual), PREFILL_TOKENS)
    activations = in_flight * (4 * arch.hidden + 3 * arch.intermediate) * size + concurrency * arch.vocab * 4
    sharded = weights + adapters_gpu + kv
    tp, per_gpu = 1, sharded + activations + CUDA_CONTEXT
    while per_gpu > needs.vram_bytes and tp * 2 <= needs.gpus:
        tp *= 2
        per_gpu = -(-sharded // tp) + activations + CUDA_CONTEXT
    if flags is not None:
        if tp > 1:
            flags += ["--tensor-parallel-size", str(tp)]
        share = min(0.99, -(-per_gpu * 100 // needs.vram_bytes) / 100)
        flags += ["--gpu-memory-utilization", f"{share:.2f}"]
    return ServingPlan(
        mode=mode, tasks=tasks, gpu_bytes=per_gpu, fits=per_gpu <= needs.vram_bytes, budget_bytes=needs.vram_bytes,
        tensor_parallel=tp, weights_bytes=weights, adapter_gpu_bytes=adapters_gpu, kv_cache_bytes=kv,
        activation_bytes=activations, overhead_bytes=CUDA_CONTEXT, resident_adapters=resident,
        host_adapters=host_adapters, host_bytes=host_bytes, storage_bytes=storage,
        full_copies_bytes=tasks * model_bytes, swap_seconds=round(swap, 6), merge_seconds=round(merge, 6),
        load_seconds=round(load, 6), extra_flops_pct=extra, mixed_batches=mixed, mixed_how=how,
        context=context, concurrency=concurrency, flags=flags, notes=notes, max_loras=max_loras,
        max_lora_rank=max_rank,
    )


def spec_leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]
