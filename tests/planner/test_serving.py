"""Serving and task switching, priced (planner/serving.py): vLLM's multi-LoRA slots, the KV cache, merged
copies, hot-swap merges, mixed-task batches, tensor parallelism, and bad serving input."""

from __future__ import annotations

import pytest

import peftplan
from peftplan.budgets import find_gpu
from peftplan.cli import main
from peftplan.errors import BadInputError
from peftplan.methods import get_method
from peftplan.models import get_spec
from peftplan.planner.serving import (
    CUDA_CONTEXT,
    DISK_GBS,
    ServingNeeds,
    kv_bytes_per_token,
    merge_seconds,
    mixed_batches,
    price_serving,
    served_weight_bytes,
    serving_needs,
    vllm_slot_linears,
)
from peftplan.planner.storage import adapter_file_bytes

GIB = 1 << 30
LLAMA = "meta-llama/Llama-3.1-8B"


def serve(method: str, needs: ServingNeeds, *, model: str = LLAMA, **cfg: object):  # type: ignore[no-untyped-def]
    spec = get_spec(model)
    m = get_method(method)
    c = m.make_config(**cfg)
    terms = m.memory_terms(spec, c)
    size = adapter_file_bytes(spec, m, terms)
    return spec, terms, size, price_serving(spec, m, terms, adapter_bytes=size, dtype="bf16", needs=needs,
                                            train_seq=2048)


def needs(**kw: object) -> ServingNeeds:
    gpu = find_gpu("rtx-4090")
    return ServingNeeds(**{"vram_bytes": 24 * GIB, "gpu": gpu, **kw})  # type: ignore[arg-type]


def test_multi_tenant_slots_follow_vllms_formula() -> None:
    # vllm/lora/layers/base_linear.py: per slice A (max_loras, 1, max_lora_rank, in), B (max_loras, 1, out, rank).
    spec, terms, _, plan = serve("lora", needs(tasks=200, switching="multi-tenant"))
    assert plan.max_loras == 32 and plan.max_lora_rank == 16  # one slot per tenant in flight, up to 32
    per_slot = 16 * sum(lin.in_features + lin.out_features for lin in spec.linears if lin.in_block) * 2
    assert plan.adapter_gpu_bytes == 32 * per_slot
    assert per_slot == 2 * terms.adapter_params  # all-linear: a slot is the adapter itself, in bf16
    assert plan.resident_adapters == 32 and plan.host_adapters == 200
    assert plan.host_bytes == 200 * 2 * terms.adapter_params
    assert plan.flags is not None
    flags = " ".join(plan.flags)
    assert "--max-loras 32 --max-lora-rank 16 --max-cpu-loras 200" in flags and "--lora-target-modules" not in flags
    assert plan.mixed_batches and "multi-LoRA" in plan.mixed_how
    kv = 32 * 2048 * kv_bytes_per_token(spec, "bf16")
    assert kv_bytes_per_token(spec, "bf16") == 2 * 32 * 8 * 128 * 2  # K and V, 32 layers x 8 kv heads x 128
    assert plan.kv_cache_bytes == kv
    assert plan.gpu_bytes == plan.weights_bytes + plan.adapter_gpu_bytes + kv + plan.activation_bytes + CUDA_CONTEXT
    assert not plan.fits and plan.gpu_bytes > 24 * GIB  # the 16-bit base, 32 slots and 32 sequences: 26 GiB


def test_packed_modules_get_every_slice_and_the_rank_rounds_up() -> None:
    spec, terms, _, plan = serve("lora", needs(tasks=4, switching="multi-tenant"), rank=4, targets="q_proj,v_proj")
    slots = vllm_slot_linears(spec, terms)
    assert {lin.leaf for lin in slots} == {"q_proj", "k_proj", "v_proj"}  # q/k/v are one packed qkv_proj
    assert plan.max_lora_rank == 8  # vllm/config/lora.py: MaxLoRARanks has no 4
    assert plan.adapter_gpu_bytes == 4 * 8 * sum(lin.in_features + lin.out_features for lin in slots) * 2
    assert plan.flags is not None and plan.flags[plan.flags.index("--lora-target-modules") + 1:][:2] == [
        "q_proj", "v_proj"]
    assert any("rank 8" in note for note in plan.notes)


def test_merge_is_one_copy_per_task_and_keeps_a_quantized_base_quantized() -> None:
    spec, _, _, plan = serve("lora", needs(tasks=3, switching="merge"))
    model = 2 * spec.total_params
    assert plan.weights_bytes == model and plan.adapter_gpu_bytes == 0 and plan.storage_bytes == 3 * model
    assert plan.swap_seconds == pytest.approx(model / (DISK_GBS * 1e9) + model / 25e9, rel=1e-4)
    assert plan.extra_flops_pct == 0 and not plan.mixed_batches
    _, qterms, _, qplan = serve("qlora", needs(tasks=3, switching="merge"))
    assert qplan.weights_bytes == served_weight_bytes(spec, qterms, "bf16") < model / 2
    assert qplan.storage_bytes == 3 * qplan.weights_bytes


def test_hot_swap_loads_unmerges_and_merges() -> None:
    spec, terms, size, plan = serve("lora", needs(tasks=10, switching="hot-swap"))
    gpu = find_gpu("rtx-4090")
    merge = merge_seconds(spec, terms, "bf16", gpu)
    # Memory-bound on a 4090: every adapted weight read and written once per pass.
    weights = sum(lin.in_features * lin.out_features for lin in spec.linears if lin.name in terms.linear_adapters)
    assert merge == pytest.approx(2 * weights * 2 / (gpu.mem_bw_gbs * 1e9), rel=0.01)
    load = size / (DISK_GBS * 1e9) + 2 * terms.adapter_params / (gpu.pcie_gbs * 1e9)
    assert plan.swap_seconds == pytest.approx(load + 2 * merge, rel=1e-4)
    assert plan.storage_bytes == 2 * spec.total_params + 10 * size
    assert plan.resident_adapters == 1 and plan.extra_flops_pct == 0  # served merged after the switch


@pytest.mark.parametrize(("method", "mixed"), [("lora", True), ("ia3", True), ("prompt", True), ("prefix", True),
                                                ("dora", False), ("loha", False), ("lokr", False), ("full", False),
                                                ("adapter", False)])
def test_which_methods_serve_a_batch_of_mixed_tasks(method: str, mixed: bool) -> None:
    spec = get_spec(LLAMA)
    m = get_method(method)
    assert mixed_batches(m.memory_terms(spec, m.make_config()))[0] is mixed


def test_methods_vllm_does_not_serve_keep_every_adapter_resident() -> None:
    _, terms, _, plan = serve("ia3", needs(tasks=200, switching="multi-tenant"))
    assert plan.flags is None and plan.resident_adapters == 200
    assert plan.adapter_gpu_bytes == 200 * 2 * terms.adapter_params
    assert plan.mixed_batches


def test_prompt_tuning_and_prefix_tuning_lengthen_the_kv_cache() -> None:
    spec, _, _, plain = serve("lora", needs(concurrency=4, context=1000))
    _, _, _, prompt = serve("prompt", needs(concurrency=4, context=1000), virtual_tokens=24)
    assert prompt.kv_cache_bytes == 4 * 1024 * kv_bytes_per_token(spec, "bf16")
    assert plain.kv_cache_bytes == 4 * 1000 * kv_bytes_per_token(spec, "bf16")


def test_tensor_parallelism_serves_what_one_gpu_cannot() -> None:
    gpu = find_gpu("h100")
    one = ServingNeeds(vram_bytes=gpu.vram_bytes, gpu=gpu)
    _, _, _, alone = serve("full", one, model="meta-llama/Llama-3.1-70B")
    assert not alone.fits and alone.tensor_parallel == 1
    _, _, _, split = serve("full", ServingNeeds(vram_bytes=gpu.vram_bytes, gpu=gpu, gpus=8),
                           model="meta-llama/Llama-3.1-70B")
    assert split.fits and split.tensor_parallel == 2  # the fewest GPUs that hold it
    assert split.gpu_bytes <= gpu.vram_bytes


def test_the_plan_json_carries_the_chosen_serving(capsys: pytest.CaptureFixture[str]) -> None:
    plan = peftplan.plan(LLAMA, vram=24, tasks=20, switching="multi-tenant", serve_concurrency=8)
    serving = plan.to_dict()["recommendation"]["serving"]
    assert {"gpu_bytes", "resident_adapters", "swap_seconds", "flags"} <= set(serving)
    assert serving["resident_adapters"] == 8 and "--max-loras" in serving["flags"]
    assert serving["gpu_bytes"] <= 24 * GIB
    entry = plan.method("lora").to_dict()
    assert entry["serving"]["concurrency"] == 8 and entry["task_switching"]["mode"] == "multi-tenant"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tasks", "0"], "--tasks must be at least 1"),
        (["--serve-vram", "-2"], "--serve-vram must be a positive"),
        (["--switching", "round-robin"], "Unknown switching mode"),
        (["--serve-gpu", "h1000"], "Did you mean"),
        (["--serve-concurrency", "0"], "--serve-concurrency"),
        (["--serve-context", "-5"], "--serve-context"),
    ],
)
def test_bad_serving_input_exits_2_with_one_line(args: list[str], needle: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", LLAMA, "--vram", "24", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_serving_needs_default_to_the_training_gpu() -> None:
    gpu = find_gpu("l4")
    base = serving_needs(vram_bytes=gpu.vram_bytes, gpu=gpu, tasks=5, switching="multi-tenant")
    assert base.gpu is gpu and base.resolved_concurrency() == 5 and base.resolved_context(512) == 512
    other = serving_needs(vram_bytes=gpu.vram_bytes, gpu=gpu, serve_gpu="h100", serve_vram=40)
    assert other.gpu.key == "h100-80gb" and other.vram_bytes == 40 * GIB and other.resolved_concurrency() == 1
    with pytest.raises(BadInputError):
        serving_needs(vram_bytes=1, gpu=gpu, serve_vram=0)
