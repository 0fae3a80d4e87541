"""Qwen2-VL's vision tower read off the spec, and its processor's resizing rule."""

from __future__ import annotations

import pytest

from peftplan.models import get_spec
from peftplan.models.vision import image_layout, smart_resize


@pytest.mark.parametrize("size", [(1024, 1325), (1325, 1024), (100, 100), (20, 30), (4000, 3000), (28, 5600),
                                  (1022, 1022), (42, 42), (2048, 2048)])
def test_smart_resize_is_the_processors(size: tuple[int, int]) -> None:
    pytest.importorskip("torch")
    # The PIL processor's copy of the rule ("Copied from ...image_processing_qwen2_vl.smart_resize"): no torchvision.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_resize

    height, width = size
    assert smart_resize(height, width) == hf_resize(height, width)


def test_qwen2_vl_7b_tower() -> None:
    spec = get_spec("Qwen/Qwen2-VL-7B-Instruct")
    tower = spec.vision
    assert tower is not None
    assert (tower.depth, tower.embed_dim, tower.heads, tower.mlp_hidden) == (32, 1280, 16, 5120)
    assert (tower.patch_size, tower.temporal_patch_size, tower.spatial_merge_size) == (14, 2, 2)
    assert tower.patch_features == 3 * 2 * 14 * 14
    assert tower.out_hidden == spec.hidden_size == 3584
    # The 675M-parameter ViT of the Qwen2-VL paper (arXiv:2409.12191, Table 1), merger included.
    assert tower.params == 675_759_104
    assert tower.merger_params == (5120 * 5120 + 5120) + (5120 * 3584 + 3584) + 2 * 1280
    assert get_spec("Qwen/Qwen2.5-7B").vision is None


def test_image_tokens_follow_the_merge() -> None:
    tower = get_spec("Qwen/Qwen2-VL-7B-Instruct").vision
    assert tower is not None
    page = image_layout(tower, size=(1024, 1325))  # width x height: longest side 1325 px
    assert page.size == (868, 1120) and page.given == (1024, 1325)  # above max_pixels: scaled down
    assert page.patches == (1120 // 14) * (868 // 14) and page.tokens == page.patches // 4 == 1240
    square = image_layout(tower, size=(896, 896), images=2)
    assert square.given is None and square.tokens == 32 * 32 and square.tokens_per_example == 2 * 1024
    direct = image_layout(tower, tokens=100)
    assert (direct.patches, direct.tokens, direct.size) == (400, 100, None)
