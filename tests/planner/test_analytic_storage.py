"""Adapter files: the planned size equals a real `save` (peft's save_pretrained where peft has the
method) on tiny models; task-switching arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.methods import get_method
from peftplan.models import get_spec, spec_from_config
from peftplan.planner.storage import Entry, adapter_file_bytes, safetensors_bytes, task_switching
from tests.conftest import TINY_BERT, TINY_LLAMA

TOLERANCE = 0.01

CASES = [
    (TINY_LLAMA, name, {})
    for name in (
        "lora",
        "dora",
        "rslora",
        "ia3",
        "loha",
        "lokr",
        "vera",
        "prefix",
        "prompt",
        "adapter",
        "full",
    )
]
CASES += [
    (TINY_LLAMA, "lora", {"rank": 4, "targets": "q_proj,v_proj"}),
    (TINY_LLAMA, "lokr", {"rank": 2, "decompose_both": True}),
    (TINY_BERT, "bitfit", {}),
    (TINY_BERT, "ia3", {}),
]


@pytest.mark.parametrize(
    ("config", "method_name", "knobs"),
    CASES,
    ids=lambda v: v["model_type"] if isinstance(v, dict) and "model_type" in v else str(v),
)
def test_adapter_file_size_matches_a_real_save(
    tmp_path: Path, config: dict, method_name: str, knobs: dict
) -> None:
    from peftplan.models.build import build_model

    method = get_method(method_name)
    cfg = method.make_config(**knobs)
    model = method.apply(build_model(config, device="cpu"), cfg)
    method.save(model, tmp_path, cfg)
    (saved,) = [p for p in tmp_path.iterdir() if p.suffix == ".safetensors"]
    spec = spec_from_config(config)
    planned = adapter_file_bytes(spec, method, method.memory_terms(spec, cfg), dtype="fp32")
    real = saved.stat().st_size
    assert abs(planned - real) / real < TOLERANCE, f"{method_name}: planned {planned:,} vs saved {real:,}"


def test_safetensors_header_is_padded_to_eight_bytes() -> None:
    size = safetensors_bytes([Entry("a", (3,), 4)], {"format": "pt"})
    assert (size - 12) % 8 == 0


def test_task_switching_storage_swap_and_multi_tenant_memory() -> None:
    spec = get_spec("meta-llama/Llama-3.1-8B")
    lora = get_method("lora")
    cfg = lora.make_config()
    terms = lora.memory_terms(spec, cfg)
    adapter = adapter_file_bytes(spec, lora, terms)
    assert adapter == pytest.approx(4 * lora.trainable_params(spec, cfg), rel=0.01)
    base = 2 * spec.total_params
    common = dict(
        method=lora,
        terms=terms,
        adapter_bytes=adapter,
        base_bytes=base,
        base_gpu_bytes=base,
        adapted_weight_bytes=base,
        pcie_gbs=25.0,
        mem_bw_gbs=1000.0,
    )
    hot = task_switching(tasks=10, mode="hot-swap", **common)  # type: ignore[arg-type]
    assert hot.storage_bytes == base + 10 * adapter
    assert hot.full_copies_bytes == 10 * base
    assert hot.swap_seconds == pytest.approx(adapter / 3e9 + adapter / 25e9)
    tenant = task_switching(tasks=10, mode="multi-tenant", **common)  # type: ignore[arg-type]
    assert tenant.serving_bytes == base + 10 * adapter
    merged = task_switching(tasks=1, mode="merge", **common)  # type: ignore[arg-type]
    assert merged.merge_seconds > 0 and merged.serving_bytes == base + adapter
    full = get_method("full")
    full_terms = full.memory_terms(spec, full.make_config())
    copies = task_switching(tasks=3, mode="hot-swap", **{**common, "method": full, "terms": full_terms})  # type: ignore[arg-type]
    assert copies.storage_bytes == 3 * base
