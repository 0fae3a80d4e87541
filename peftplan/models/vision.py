"""The vision tower of a vision-language model, and how its processor turns an image into tokens.

Read from a `ModelSpec` (its config and parameter inventory), never from weights. Pure Python: no
torch, no transformers. Supported: Qwen2-VL (`qwen2_vl`; olmOCR is one), whose tower in transformers
5.23 (`models/qwen2_vl/modeling_qwen2_vl.py`) is a Conv3d patch embedding of `temporal_patch_size` x
`patch_size`² pixels, `depth` pre-LayerNorm ViT blocks (fused qkv with bias, 2D rotary, attention over
each image's patches, a `fc1 -> quick_gelu -> fc2` MLP of `embed_dim * mlp_ratio`) and a `PatchMerger`
(LayerNorm, then `spatial_merge_size`² neighbouring patches concatenated into a Linear -> GELU ->
Linear onto the language model's hidden size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftplan.models.spec import ModelSpec

__all__ = ["ImageLayout", "VisionTower", "image_layout", "smart_resize", "vision_tower"]

# Model types whose tower `vision_tower` reads (Qwen2.5-VL's windowed, gated tower is not priced yet).
SUPPORTED = frozenset({"qwen2_vl"})

# Qwen2VLImageProcessor's defaults in transformers 5.23 (`image_processing_qwen2_vl.py`:
# size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}): the pixel range of a resized image.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


@dataclass(frozen=True)
class VisionTower:
    """The facts of a Qwen2-VL-style vision tower the planner needs."""

    path: str  # the tower module, e.g. "model.visual"
    depth: int
    embed_dim: int
    heads: int
    mlp_hidden: int  # int(embed_dim * mlp_ratio)
    act: str  # the blocks' MLP activation (HF name; Qwen2-VL: quick_gelu)
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    in_channels: int
    out_hidden: int  # the merger's output width: the language model's hidden size
    params: int  # the tower with its merger
    merger_params: int
    merger_path: str

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    @property
    def factor(self) -> int:
        """Image sides are resized to multiples of this many pixels (a merged patch)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def patch_features(self) -> int:
        """Values of one flattened patch in `pixel_values` (channels x temporal x patch²)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge(self) -> int:
        """Patches merged into one language-model token."""
        return self.spatial_merge_size * self.spatial_merge_size

    @property
    def merged_width(self) -> int:
        """The merger's input width: `merge` patches concatenated."""
        return self.embed_dim * self.merge


def vision_tower(spec: ModelSpec) -> VisionTower | None:
    """The vision tower of `spec`, or None for a text model or a VLM whose tower is not supported."""
    if spec.kind != "vlm" or spec.model_type not in SUPPORTED:
        return None
    vc = spec.config.get("vision_config")
    if not isinstance(vc, dict):
        return None
    path = next((p.name.split(".patch_embed.", 1)[0] for p in spec.params if ".patch_embed." in p.name), None)
    if path is None:
        return None
    prefix, merger_prefix = f"{path}.", f"{path}.merger."
    params = sum(p.numel for p in spec.params if p.tied_to is None and p.name.startswith(prefix))
    merger = sum(p.numel for p in spec.params if p.tied_to is None and p.name.startswith(merger_prefix))
    embed = int(vc["embed_dim"])
    return VisionTower(
        path=path,
        depth=int(vc["depth"]),
        embed_dim=embed,
        heads=int(vc["num_heads"]),
        mlp_hidden=int(embed * float(vc.get("mlp_ratio", 4))),
        act=str(vc.get("hidden_act", "quick_gelu")),
        patch_size=int(vc.get("patch_size", 14)),
        temporal_patch_size=int(vc.get("temporal_patch_size", 2)),
        spatial_merge_size=int(vc.get("spatial_merge_size", 2)),
        in_channels=int(vc.get("in_channels") or vc.get("in_chans") or 3),
        out_hidden=int(vc.get("hidden_size", spec.hidden_size)),
        params=params,
        merger_params=merger,
        merger_path=f"{path}.merger",
    )


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) Qwen2-VL's image processor resizes an image to.

    The rule of transformers 5.23 `models/qwen2_vl/image_processing_qwen2_vl.py: smart_resize`: each side
    rounded (Python's round, half to even) to a multiple of `factor`; if the area leaves
    [min_pixels, max_pixels], both sides are scaled by one factor (floor when shrinking, ceil when
    growing) so the aspect ratio is kept.

    Raises:
        ValueError: an aspect ratio above 200, which the processor refuses.
    """
    if min(height, width) < 1:
        raise ValueError(f"image sides must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageLayout:
    """The images of one training example as the model sees them.

    Attributes:
        images: images per example.
        patches: vision-tower patches per image (what its blocks attend over).
        tokens: language-model tokens per image (patches / spatial_merge_size²).
        size: the (width, height) the processor resizes each image to, None with `--image-tokens`.
        given: the (width, height) given, when the processor changes it.
    """

    images: int
    patches: int
    tokens: int
    size: tuple[int, int] | None = None
    given: tuple[int, int] | None = None

    @property
    def tokens_per_example(self) -> int:
        return self.images * self.tokens


def image_layout(tower: VisionTower, *, size: tuple[int, int] | None = None, images: int = 1,
                 tokens: int | None = None) -> ImageLayout:
    """The layout of `images` images of `size` (width, height) each, or of `tokens` LM tokens each.

    Raises:
        ValueError: neither or both of `size` and `tokens`; a non-positive count; a size the processor refuses.
    """
    if images < 1:
        raise ValueError(f"images per example must be at least 1, got {images}")
    if (size is None) == (tokens is None):
        raise ValueError("give either an image size or a token count per image")
    if tokens is not None:
        if tokens < 1:
            raise ValueError(f"image tokens must be at least 1, got {tokens}")
        return ImageLayout(images=images, patches=tokens * tower.merge, tokens=tokens)
    assert size is not None
    width, height = size
    h, w = smart_resize(height, width, factor=tower.factor)
    patches = (h // tower.patch_size) * (w // tower.patch_size)
    return ImageLayout(images=images, patches=patches, tokens=patches // tower.merge, size=(w, h),
                       given=(width, height) if (w, h) != (width, height) else None)
