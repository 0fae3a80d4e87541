"""Adapter files: the planned size equals a real `save` (peft's save_pretrained where peft has the
method) on tiny models (serving and task switching: tests/planner/test_serving.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.methods import get_method
from peftplan.models import spec_from_config
from peftplan.planner.storage import Entry, adapter_file_bytes, safetensors_bytes
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
