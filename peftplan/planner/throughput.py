"""Training throughput, time and cost from FLOPs at a stated model-FLOPs utilisation (MFU).

FLOPs per trained token:
- full fine-tuning: 6 per matmul weight (forward 2, backward 4), plus attention;
- frozen-base PEFT: 4 per base weight (forward, and the input gradients backward needs), plus the
  adapter's own FLOPs (`AdapterKind.flops`, in the method's package: 6 per LoRA weight; LoHa and LoKr
  build a dense delta weight and multiply by it, a full extra matmul per adapted layer; an adapter on
  a fused expert parameter, `ParamAdapterKind.flops`, makes the active experts' weight gradients and
  builds its adapted weight once per step), plus attention;
- mixture of experts: a token multiplies by the router and top_k of the E experts of each MoE block
  (active parameters); dense blocks and shared experts count in full;
- gradient checkpointing adds one more forward.
Attention counts 4·S·width per layer forward (causal: half of that, as flash kernels skip it).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftplan.models.arch import Arch
from peftplan.models.spec import ModelSpec
from peftplan.replay.terms import MemoryTerms, numel

DEFAULT_MFU = 0.40


@dataclass(frozen=True)
class Throughput:
    """Training speed and what the data costs."""

    flops_per_token: float
    tokens_per_second: float
    mfu: float
    train_tokens: int | None
    hours: float | None
    cost_usd: float | None


def matmul_params(spec: ModelSpec, arch: Arch) -> int:
    """Weights every token multiplies by in a forward: the Linears (attention, dense MLPs, shared experts,
    LM head), and in each MoE block the router and top_k of its E fused experts (the active parameters)."""
    linear = sum(lin.in_features * lin.out_features for lin in spec.linears)
    moe = spec.moe
    if moe is not None and moe.fused:
        for layer in moe.layers:
            routed = sum(p.numel for p in layer.experts if len(p.shape) == 3)  # biases are adds, not matmuls
            linear += routed * moe.top_k // moe.num_experts
            if layer.router is not None and not layer.router.linear:
                linear += layer.router.in_features * layer.router.out_features
    return linear


def attention_flops(arch: Arch, seq: int, extra_kv: int = 0) -> float:
    """Forward FLOPs per token for scores and weighted values, over every layer."""
    per_layer = 4 * (seq + extra_kv) * arch.q_width
    return arch.layers * per_layer * (0.5 if arch.causal else 1.0)


def adapter_flops(spec: ModelSpec, terms: MemoryTerms, *, forward_only: bool = False, tokens: int = 1) -> float:
    """FLOPs per token that the method's own tensors add: training (forward and backward) or forward only;
    `tokens` per step (adapters on parameters build a whole adapted weight once per forward)."""
    linears = spec.linears_by_name
    train = not forward_only
    total = 0.0
    for name, adapter in terms.linear_adapters.items():
        lin = linears.get(name)
        if lin is not None:
            total += adapter.kind.flops(lin, adapter, train=train)
    moe = spec.moe
    routed = moe.top_k / moe.num_experts if moe is not None and moe.num_experts else 1.0
    for wrapper in terms.param_adapters.values():
        active = routed if wrapper.experts > 1 else 1.0
        total += wrapper.kind.flops(wrapper, train=train, tokens=tokens, active=active)
    if terms.bottleneck:
        total += (2.0 + 4.0 * train) * sum(numel(shape) for shape in terms.extra_tensors)
    return total


def training_flops_per_token(
    spec: ModelSpec, arch: Arch, terms: MemoryTerms, seq: int, *, checkpointing: bool, batch: int = 1,
) -> float:
    """FLOPs to train on one token (see the module docstring); `batch` sequences of `seq` per step."""
    weights = matmul_params(spec, arch)
    attn = attention_flops(arch, seq, terms.prefix_tokens)
    if terms.trainable_base == "all":
        flops = 6.0 * weights + 3 * attn
    else:
        flops = 4.0 * weights + 3 * attn + adapter_flops(spec, terms, tokens=seq * batch)
    if checkpointing:
        flops += 2.0 * weights + attn
    if terms.extra_tokens:  # the prompt is processed with every sequence
        flops *= (seq + terms.extra_tokens) / seq
    return flops


def throughput(
    flops_per_token: float, *, tflops: float, gpus: int, mfu: float = DEFAULT_MFU,
    train_tokens: int | None = None, usd_per_hour: float | None = None,
) -> Throughput:
    """Tokens per second on `gpus` GPUs of `tflops` bf16 peak at `mfu`, and time and cost for the data."""
    tokens_per_second = gpus * tflops * 1e12 * mfu / flops_per_token
    hours = cost = None
    if train_tokens is not None:
        hours = train_tokens / tokens_per_second / 3600
        cost = hours * usd_per_hour * gpus if usd_per_hour is not None else None
    return Throughput(flops_per_token, tokens_per_second, mfu, train_tokens, hours, cost)


def inference_overhead(spec: ModelSpec, arch: Arch, terms: MemoryTerms, kind: str, seq: int) -> dict[str, object]:
    """What the method costs at inference: extra FLOPs unmerged (none once merged), extra tokens or layers."""
    base = 2.0 * matmul_params(spec, arch) + attention_flops(arch, seq)
    if kind == "none":
        return {"kind": "none", "extra_flops_pct": 0.0}
    if kind == "extra-tokens":
        tokens = terms.extra_tokens or terms.prefix_tokens
        return {"kind": kind, "extra_tokens": tokens, "extra_flops_pct": round(100.0 * tokens / max(seq, 1), 3)}
    if kind == "extra-layers":
        layers = 2.0 * sum(numel(shape) for shape in terms.extra_tensors)
        return {"kind": kind, "extra_layers": len(terms.bottleneck_sites), "extra_flops_pct": round(100.0 * layers / base, 3)}
    extra = adapter_flops(spec, terms, forward_only=True, tokens=seq)
    return {"kind": "unmerged-matmul", "extra_flops_pct": round(100.0 * extra / base, 3), "merged_extra_flops_pct": 0.0}
