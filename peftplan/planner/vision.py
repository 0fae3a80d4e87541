"""A VLM's images in a training step: the image options, and the vision tower's activations.

`image_context` turns `--image-size` / `--image-tokens` / `--images-per-example` / `--train-vision` into
the TrainContext's image fields (the processor's resizing from `models/vision.py`) and the spec's frozen
tower. `vision_activations` replays Qwen2-VL's tower as transformers 5.23 runs it
(`models/qwen2_vl/modeling_qwen2_vl.py`: `Qwen2VLModel.get_image_features`, `PatchEmbed`,
`Qwen2VLVisionBlock`, `VisionAttention` with SDPA per image, `VisionMlp` with `quick_gelu`, `PatchMerger`,
then `inputs_embeds.masked_scatter`) with the same replay ops as the language model's blocks. Its sizes
are per example (the `b` term of a `Poly`): the tower's work does not grow with the text.

The image tokens are part of `--seq-len` (the language model's sequence, as trainers' `max_length`
counts them), so the language model's replay is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from peftplan.errors import BadInputError
from peftplan.models.spec import LinearInfo, ModelSpec
from peftplan.models.vision import VisionTower, image_layout
from peftplan.planner.activations import ActivationProfile
from peftplan.planner.adapters import adapted_linear
from peftplan.planner.context import TrainContext
from peftplan.replay.ops import Ops, Replay, Weight
from peftplan.replay.symbolic import ZERO, Graph, Poly, Sym
from peftplan.replay.terms import MemoryTerms

__all__ = ["VisionActivations", "image_context", "parse_image_size", "step_activations", "vision_activations",
           "with_vision"]


def parse_image_size(text: str) -> tuple[int, int]:
    """`"1024x1325"` -> (1024, 1325) (width, height).

    Raises:
        BadInputError: not two positive integers joined by "x".
    """
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise BadInputError(f"--image-size must be WIDTHxHEIGHT in pixels (e.g. 1024x1325), got {text!r}")
    return int(parts[0]), int(parts[1])


def image_context(spec: ModelSpec, ctx: TrainContext, *, image_size: str | None, images: int | None,
                  tokens: int | None, train_vision: bool) -> tuple[ModelSpec, TrainContext, list[str]]:
    """The spec (its tower frozen unless `train_vision`) and ctx with the step's images, and the plan's notes.

    Raises:
        BadInputError: image options on a model with no (supported) vision tower; both --image-size and
            --image-tokens; a size the processor refuses; images that leave no room for text in --seq-len.
    """
    given = image_size is not None or images is not None or tokens is not None or train_vision
    tower = spec.vision
    if tower is None:
        if given:
            option = ("--image-size" if image_size is not None else "--image-tokens" if tokens is not None
                      else "--images-per-example" if images is not None else "--train-vision")
            what = (f"{spec.architecture}'s vision tower is not priced yet (Qwen2-VL's is)" if spec.kind == "vlm"
                    else f"it is a text-only model ({spec.architecture})")
            raise BadInputError(f"{option} does not apply to {spec.model_id or spec.architecture}: {what}")
        return spec, ctx, []
    spec = spec.with_vision_trained(train_vision)
    if image_size is None and tokens is None:
        if images is not None or train_vision:
            raise BadInputError("give each image's size (--image-size WxH) or its tokens (--image-tokens N)")
        return spec, ctx, [f"{spec.model_id or spec.architecture} is planned text only: no image in the step "
                           "(pass --image-size WxH or --image-tokens N to price images and the vision tower)"]
    if image_size is not None and tokens is not None:
        raise BadInputError("give --image-size or --image-tokens, not both")
    try:
        layout = image_layout(tower, size=parse_image_size(image_size) if image_size is not None else None,
                              images=1 if images is None else images, tokens=tokens)
    except ValueError as exc:
        raise BadInputError(f"images: {exc}") from None
    per_example = layout.tokens_per_example
    if per_example >= ctx.seq_len:
        raise BadInputError(f"{layout.images} image(s) of {layout.tokens:,} tokens take {per_example:,} tokens, "
                            f"not less than --seq-len {ctx.seq_len:,}, which counts them: raise --seq-len")
    notes = []
    if layout.given is not None and layout.size is not None:
        notes.append(f"each {layout.given[0]}x{layout.given[1]} image is resized to {layout.size[0]}x{layout.size[1]} "
                     f"by the processor (sides in multiples of {tower.factor} px, within its min/max pixels)")
    trained = "trained (--train-vision)" if train_vision else "frozen (--train-vision trains it)"
    notes.append(f"{layout.images} image(s) per example: {layout.tokens:,} tokens each ({layout.patches:,} patches in "
                 f"the vision tower), {per_example:,} of the {ctx.seq_len:,} tokens of --seq-len; the vision tower "
                 f"and projector are {trained}; LoRA presets adapt "
                 + ("the language model, the tower and the projector (peft's all-linear)" if train_vision
                    else "the language model only (peft's own all-linear would adapt the tower too)"))
    ctx = replace(ctx, images=layout.images, image_patches=layout.patches, image_tokens=layout.tokens,
                  train_vision=train_vision)
    return spec, ctx, notes


@dataclass(frozen=True)
class _TowerReplay(Replay):
    """A replay whose "tokens" are `rows` rows per example (patches, or merged patches)."""

    rows: int = 0

    def tok(self, width: int) -> Poly:
        return Poly(b=width * self.rows)


@dataclass(frozen=True)
class VisionActivations:
    """The tower's bytes in a step, per example (`Poly` b terms).

    Attributes:
        inputs: `pixel_values` (fp32, as the processor returns it) and the image grid: alive all step.
        saved: what the tower and merger save for backward (zero for a frozen, unadapted tower).
        ckpt_saved: the same with checkpointed vision blocks (the patch embedding's saved set, each block's
            input, the merger's saved set).
        forward_peak: the tower's largest forward moment beyond `inputs` and `saved` so far.
        backward_temp: gradient temporaries of its backward (it runs last, on top of every gradient).
        block_saved: what one vision block saves (what its recomputation rebuilds under checkpointing).
        embeds_copy: `masked_scatter`'s new `inputs_embeds` beside the old one.
        output_grad: the image rows require grad, so the language model's embeddings do too.
    """

    inputs: Poly
    saved: Poly
    ckpt_saved: Poly
    forward_peak: Poly
    backward_temp: Poly
    block_saved: Poly
    embeds_copy: Poly
    output_grad: bool = False

    @property
    def trains(self) -> bool:
        return self.saved != ZERO


def _tower_linear(spec: ModelSpec, name: str) -> LinearInfo:
    return next(lin for lin in spec.linears if lin.name == name)


def vision_activations(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext, r: Replay, *,
                       checkpointing: bool = False) -> VisionActivations | None:
    """Replay the vision tower of one example's images; None when the step has no image.

    `checkpointing`: the step checkpoints its blocks (the tower's patch embedding then requires grad).
    """
    tower = spec.vision
    if tower is None or not ctx.images:
        return None
    if not ctx.train_vision:
        terms = replace(terms, trainable_base="none")  # the tower's base is frozen whatever the method
    patches = ctx.images * ctx.image_patches
    tr = _TowerReplay(**{**_fields(r), "terms": terms, "rows": patches})
    g = Graph()
    ops = Ops(tr, g)
    inputs = Poly(b=patches * tower.patch_features * 4 + ctx.images * 3 * 8)  # fp32 pixels, int64 grid_thw
    # get_image_features: pixel_values.type(visual.dtype), alive until it returns.
    weight_size = tr.param_itemsize(tr.trains_all)
    pixels = ops.cast(Sym.fresh(Poly(b=patches * tower.patch_features), 4, False), weight_size)
    x = ops.matmul(pixels, Weight(tower.embed_dim * tower.patch_features, weight_size, tr.trains_all,
                                  f"{tower.path}.patch_embed.proj"), tower.embed_dim)  # Conv3d = a matmul per patch
    if checkpointing and not x.grad:
        # Checkpointing makes every input embedding's output require grad (`enable_input_require_grads`, see
        # `with_vision`), the tower's `patch_embed` too: a frozen tower then records autograd, its blocks
        # save their checkpointed inputs and the merger its activations, and backward runs through it.
        x = x.view(grad=True)
    held = [pixels] if pixels.itemsize != 4 else []
    embed_saved = g.total()  # a trained patch embedding saves its (cast) pixels, outside any checkpoint
    # Axial rotary tables (fp32 cos and sin, shared by every block; saved by the rope products).
    cos = Sym.fresh(tr.tok(tower.head_dim), 4, False)
    sin = Sym.fresh(tr.tok(tower.head_dim), 4, False)
    tables = cos.storage_bytes + sin.storage_bytes
    blocks_saved = ZERO
    block_saved = ZERO
    block_inputs = ZERO
    peaks: list[Poly] = []
    largest = ZERO
    for index in range(tower.depth):
        start = g.total()
        block_inputs = block_inputs + x.storage_bytes
        bg = Graph()
        bops = Ops(tr, bg)
        x = _block(bops, spec, tower, index, x, cos, sin, held)
        blocks_saved = blocks_saved + bg.total()
        block_saved = bg.total() if bg.total().b > block_saved.b else block_saved
        for unsaved, _ in bg.live_moments:
            peaks.append(start + unsaved + tables)
        g.saved.update(bg.saved)
        largest = bg.largest if bg.largest.b > largest.b else largest
        if bg.used_external:
            g.save(cos, sin)
    before_merger = g.total()
    mops = Ops(replace(tr, rows=patches // tower.merge), g)
    merged = _merger(ops, mops, spec, tower, x)
    peaks.append(g.total() + merged.storage_bytes * 2)  # the merger's output and its concatenated copy
    merger_saved = g.total() - before_merger
    saved = g.total()
    grad = x.grad or saved != ZERO
    ckpt_saved = (embed_saved + block_inputs + merger_saved + (tables if grad else ZERO)) if grad else ZERO
    peak = max(peaks, key=lambda p: p.b) if peaks else ZERO
    embeds = Poly(n=spec.hidden_size * r.compute_itemsize)  # a copy of the (B, S, H) embeddings
    return VisionActivations(inputs=inputs, saved=saved, ckpt_saved=ckpt_saved, forward_peak=peak - saved,
                             backward_temp=largest * 2 if grad else ZERO, block_saved=block_saved if grad else ZERO,
                             embeds_copy=embeds, output_grad=merged.grad)


def step_activations(spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext) -> ActivationProfile:
    """The step's activation profile: the language model's (`activation_profile`) with the vision tower.

    Like the language model's, the profile holds the step with and without checkpointing (a plan's search
    prices both from one profile), so the tower is replayed both ways.
    """
    from peftplan.planner.activations import activation_profile, make_replay

    r = make_replay(spec, terms, ctx)
    vis = vision_activations(spec, terms, ctx, r)
    ckpt_vis = vision_activations(spec, terms, ctx, r, checkpointing=True)
    # Image rows that carry grad make the embeddings require grad, which changes what the first block saves;
    # under checkpointing the blocks keep only their inputs, so the difference is the non-checkpointed step's.
    profile = activation_profile(spec, terms, ctx, embeds_grad=vis is not None and vis.output_grad)
    if vis is None or ckpt_vis is None:
        return profile
    return with_vision(profile, spec, terms, ctx, vis, ckpt_vis)


def with_vision(profile: ActivationProfile, spec: ModelSpec, terms: MemoryTerms, ctx: TrainContext,
                vis: VisionActivations, ckpt_vis: VisionActivations) -> ActivationProfile:
    """`profile` (the language model's) with the vision tower of the step's images added: `vis` as replayed
    without checkpointing, `ckpt_vis` with it.

    The tower runs first, after the token embeddings (`Qwen2VLModel.forward`): its forward moment sits on the
    batch and the embeddings; what it saves stays through the language model's forward and backward; its
    backward runs last, beside every gradient (`vision_backward`).

    With checkpointing, transformers 5.23's `gradient_checkpointing_enable` (`modeling_utils.py:3181-3189`)
    calls `enable_input_require_grads` (`:2137-2170`), which makes the output of every `PreTrainedModel`'s
    input embedding require grad: the vision tower's `patch_embed` too (`_input_embed_layer`,
    `modeling_qwen2_vl.py:647`). A frozen tower then records autograd (`ckpt_vis`), and the text
    embeddings' output, made a leaf, stays alive beside `masked_scatter`'s copy.
    """
    from peftplan.planner.activations import make_replay

    embeddings = Poly(n=spec.hidden_size * make_replay(spec, terms, ctx).param_itemsize(terms.trainable_base == "all"))
    start = profile.batch + vis.inputs + embeddings
    # The frozen embedding's output made a leaf by the hook: its AccumulateGrad node holds it until backward is over.
    leaf = embeddings if terms.trainable_base != "all" else ZERO
    ckpt_saved = ckpt_vis.ckpt_saved + leaf
    return replace(
        profile,
        saved=profile.saved + vis.inputs + vis.saved,
        ckpt_saved=profile.ckpt_saved + vis.inputs + ckpt_saved,
        batch=profile.batch + vis.inputs,
        moments=[m + vis.inputs + vis.saved for m in profile.moments]
        + [start + vis.saved + vis.forward_peak, start + vis.saved + vis.embeds_copy],
        ckpt_moments=[m + vis.inputs + ckpt_saved for m in profile.ckpt_moments]
        + [start + ckpt_vis.ckpt_saved + ckpt_vis.forward_peak, start + ckpt_vis.ckpt_saved + ckpt_vis.embeds_copy],
        # The tower's backward runs last; under checkpointing, on its checkpoints and one block rebuilt.
        vision_backward=(vis.saved + vis.backward_temp) if vis.trains else ZERO,
        ckpt_vision_backward=(ckpt_vis.ckpt_saved + ckpt_vis.block_saved + ckpt_vis.backward_temp)
        if ckpt_vis.trains else ZERO,
    )


def _fields(r: Replay) -> dict[str, Any]:
    return {name: getattr(r, name) for name in Replay.__dataclass_fields__}


def _block(ops: Ops, spec: ModelSpec, tower: VisionTower, index: int, x: Sym, cos: Sym, sin: Sym,
           held: list[Sym]) -> Sym:
    """`Qwen2VLVisionBlock.forward`: x + attn(norm1(x)); x + mlp(norm2(x))."""
    prefix = f"{tower.path}.blocks.{index}"
    e = tower.embed_dim
    ops.g.external = frozenset({cos.storage, sin.storage})
    h = ops.layer_norm(x, f"{prefix}.norm1")
    qkv = adapted_linear(ops, h, _tower_linear(spec, f"{prefix}.attn.qkv"))
    q, k, v = (qkv.view(ops.r.tok(e)) for _ in range(3))  # reshape/permute/unbind: views
    q, k = _rope(ops, q, cos, sin, held + [x, h, qkv]), _rope(ops, k, cos, sin, held + [x, h, qkv])
    # SDPA per image (torch.split views); the CPU/CUDA kernels save q, k, v, the output and an fp32 lse.
    grad = q.grad or k.grad or v.grad
    out = ops.tok(e, q.itemsize, grad)
    if grad:
        ops.g.save(q, k, v, out, ops.tok(tower.heads, 4, False))
    cat = ops.pointwise(out)  # torch.cat of the per-image outputs: always a copy
    ops.g.live(*held, x, qkv, q, k, out, cat)
    attn = adapted_linear(ops, cat, _tower_linear(spec, f"{prefix}.attn.proj"))
    x = ops.add(x, attn)
    h = ops.layer_norm(x, f"{prefix}.norm2")
    fc1 = adapted_linear(ops, h, _tower_linear(spec, f"{prefix}.mlp.fc1"))
    act = _quick_gelu(ops, fc1, held + [x, h]) if tower.act == "quick_gelu" else ops.act(fc1, tower.act)
    ops.g.live(*held, x, h, fc1, act)
    out = adapted_linear(ops, act, _tower_linear(spec, f"{prefix}.mlp.fc2"))
    return ops.add(x, out)


def _rope(ops: Ops, t: Sym, cos: Sym, sin: Sym, held: list[Sym]) -> Sym:
    """`apply_rotary_pos_emb_vision` on one of q, k: in fp32, `t * cos + rotate_half(t) * sin`, cast back."""
    t32 = ops.cast(t, 4)
    a = ops.mul(t32, cos)
    half = ops.fresh(Poly(b=t.numel.b // 2), 4, t.grad)  # -x2
    rotated = ops.pointwise(t32, 4)  # cat(-x2, x1)
    ops.g.live(*held, t32, a, half, rotated)
    b = ops.mul(rotated, sin)
    out = ops.add(a, b)
    ops.g.live(*held, t32, a, b, out)
    return ops.cast(out, t.itemsize)


def _quick_gelu(ops: Ops, x: Sym, held: list[Sym]) -> Sym:
    """transformers' `QuickGELUActivation`: `x * torch.sigmoid(1.702 * x)` (sigmoid saves its output)."""
    scaled = ops.pointwise(x)
    s = ops.fresh(x.numel, x.itemsize, x.grad)
    if x.grad:
        ops.g.save(s)
    ops.g.live(*held, x, scaled, s)
    return ops.mul(x, s)


def _merger(ops: Ops, mops: Ops, spec: ModelSpec, tower: VisionTower, x: Sym) -> Sym:
    """`PatchMerger`: ln_q over each patch, `merge` patches concatenated (a view), Linear -> GELU -> Linear
    (`mops` counts rows of merged patches)."""
    path = tower.merger_path
    h = ops.layer_norm(x, f"{path}.ln_q").view(mops.r.tok(tower.merged_width))
    ops = mops
    first = adapted_linear(ops, h, _tower_linear(spec, f"{path}.mlp.0"))
    act = ops.act(first, "gelu")
    return adapted_linear(ops, act, _tower_linear(spec, f"{path}.mlp.2"))
