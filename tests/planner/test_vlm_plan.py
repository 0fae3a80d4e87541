"""A VLM's images in the plan: options, bad input, the frozen tower, and the analytic tower against real steps.

The calibration cells run one real training step of a tiny random Qwen2-VL (2 text blocks, 2 vision
blocks, built from a config) on CPU with image inputs, under the live-bytes tracker, and compare the
analytic `peak_allocated` (CPU dispatch) with it: within 3%.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import peftplan
from peftplan.errors import BadInputError
from peftplan.methods import get_method
from peftplan.models import spec_from_config
from peftplan.models.catalog import catalog_config_dict
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import estimate_memory
from peftplan.planner.vision import image_context

VLM = "Qwen/Qwen2-VL-7B-Instruct"


def _base() -> dict:
    base = catalog_config_dict(VLM)
    return {**base, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 4096, "max_window_layers": 2, "image_token_id": 4000,
            "video_token_id": 4001, "vision_start_token_id": 4002, "vision_end_token_id": 4003,
            "vision_token_id": 4004, "bos_token_id": 1, "eos_token_id": 2,
            "vision_config": {**base["vision_config"], "depth": 2, "embed_dim": 128, "num_heads": 4,
                              "hidden_size": 512}}


def test_image_options_on_a_text_model_exit_2() -> None:
    with pytest.raises(BadInputError, match="text-only model"):
        peftplan.plan("Qwen/Qwen2.5-7B", vram=80, methods="lora", image_size="1024x1325")
    done = subprocess.run([sys.executable, "-m", "peftplan.cli", "plan", "--model", "Qwen/Qwen2.5-7B", "--vram", "80",
                           "--image-tokens", "256"], capture_output=True, text=True)
    assert done.returncode == 2 and "--image-tokens does not apply" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("options", "reason"), [
    ({"image_size": "1024"}, "WIDTHxHEIGHT"),
    ({"image_size": "1024x1325", "image_tokens": 100}, "not both"),
    ({"images_per_example": 2}, "--image-size WxH"),
    ({"image_tokens": 4096}, "raise --seq-len"),
    ({"image_size": "10x4000"}, "aspect ratio"),
])
def test_bad_image_options(options: dict, reason: str) -> None:
    with pytest.raises(BadInputError, match=reason):
        peftplan.plan(VLM, vram=80, methods="lora", seq_len=4096, **options)


def test_a_vlm_without_images_is_planned_text_only_in_one_note() -> None:
    plan = peftplan.plan(VLM, vram=80, methods="lora")
    said = [n for n in plan.notes if "text only" in n]
    assert len(said) == 1 and "--image-size" in said[0]
    assert "images_per_example" not in plan.to_dict()["training"]


def test_images_priced_and_resize_said() -> None:
    text = peftplan.plan(VLM, vram=80, methods="lora", seq_len=4096).method("lora")
    plan = peftplan.plan(VLM, vram=80, methods=["full", "lora"], seq_len=4096, image_size="1024x1325")
    assert any("resized to 868x1120" in n for n in plan.notes)
    training = plan.to_dict()["training"]
    assert (training["image_tokens"], training["image_patches"], training["train_vision"]) == (1240, 4960, False)
    lora = plan.method("lora")
    assert lora.trainable_params == text.trainable_params  # presets keep to the language model
    assert lora.memory.peak_allocated >= text.memory.peak_allocated
    tower = plan.spec.vision
    assert tower is not None
    assert plan.method("full").trainable_params == plan.spec.total_params - tower.params
    trained = peftplan.plan(VLM, vram=80, methods=["full", "lora"], seq_len=4096, image_size="1024x1325",
                            train_vision=True)
    assert trained.method("full").trainable_params == trained.spec.total_params
    assert trained.method("lora").trainable_params > lora.trainable_params  # all-linear reaches the tower
    # Without checkpointing, a LoRA-adapted tower saves its activations (32 blocks over 4,960 patches); a frozen one
    # saves nothing. (With checkpointing both keep the blocks' inputs: `enable_input_require_grads` makes the frozen
    # tower's patch embedding require grad too.)
    options = {"vram": 80, "methods": "lora", "seq_len": 4096, "image_size": "1024x1325",
               "grad_checkpointing": False}
    frozen = peftplan.plan(VLM, **options).method("lora").memory.peak_allocated
    assert peftplan.plan(VLM, train_vision=True, **options).method("lora").memory.peak_allocated > frozen + 2**30


@pytest.mark.parametrize(("method_name", "train_vision", "ckpt", "tokens", "seq", "batch"), [
    ("lora", False, False, 32, 160, 2), ("lora", False, True, 32, 160, 2), ("lora", True, False, 32, 160, 2),
    ("full", True, False, 32, 160, 2),
    # Larger images: the tower's checkpoints and its backward under checkpointing weigh more.
    ("lora", True, True, 256, 600, 1), ("full", True, True, 256, 600, 1),
])
def test_analytic_tower_matches_the_real_step(method_name: str, train_vision: bool, ckpt: bool, tokens: int,
                                              seq: int, batch: int) -> None:
    pytest.importorskip("torch")
    from peftplan.planner.trace import trace_step_at_depth

    config = _base()
    spec = spec_from_config(config, model_id="tiny-qwen2-vl", cache=False)
    ctx = TrainContext(seq_len=seq, batch_size=batch, device="cpu", grad_checkpointing=ckpt)
    spec, ctx, _ = image_context(spec, ctx, image_size=None, images=2, tokens=tokens, train_vision=train_vision)
    method = get_method(method_name)
    cfg = method.make_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = trace_step_at_depth(config, method, cfg, ctx, 2, real=True)
    analytic = estimate_memory(spec, method, cfg, ctx).peak_allocated
    assert abs(analytic - real.peak) / real.peak < 0.03, (analytic, real.peak, real.peak_segment)


@pytest.mark.parametrize(("method_name", "train_vision", "ckpt"), [
    ("lora", False, False), ("lora", True, True), ("full", True, False), ("full", False, True),
])
def test_trace_equals_the_real_image_step(method_name: str, train_vision: bool, ckpt: bool) -> None:
    """The fake-tensor step with images holds, segment by segment, the bytes the real step holds."""
    pytest.importorskip("torch")
    from tests.planner.test_trace_reality import assert_same_step

    config = _base()
    spec = spec_from_config(config, model_id="tiny-qwen2-vl", cache=False)
    ctx = TrainContext(seq_len=96, batch_size=2, device="cpu", grad_checkpointing=ckpt)
    _, ctx, _ = image_context(spec, ctx, image_size=None, images=2, tokens=16, train_vision=train_vision)
    assert assert_same_step(config, method_name, ctx) > 0


def test_trace_command_takes_the_image_options(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps(_base()))
    command = [sys.executable, "-m", "peftplan.cli", "trace", "--model", str(tmp_path), "--method", "lora",
               "--seq-len", "96", "--image-tokens", "16", "--images-per-example", "2", "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["training"]["image_tokens"], data["training"]["image_patches"]) == (16, 64)
    assert any("2 image(s) per example" in note for note in data["notes"])
    plan = peftplan.plan(str(tmp_path), methods="lora", seq_len=96, image_tokens=16, images_per_example=2,
                         device="cpu")
    traced = data["methods"][0]["memory"]["peak_allocated"]
    assert abs(plan.method("lora").memory.peak_allocated - traced) / traced < 0.03
    text = subprocess.run([sys.executable, "-m", "peftplan.cli", "trace", "--model", "Qwen/Qwen2.5-7B",
                           "--method", "lora", "--image-size", "1024x1325"], capture_output=True, text=True)
    assert text.returncode == 2 and "--image-size does not apply" in text.stderr and "Traceback" not in text.stderr


@pytest.mark.parametrize("train_vision", [False, True])
def test_one_profile_prices_the_step_with_and_without_checkpointing(train_vision: bool) -> None:
    """A plan's search builds the step once without checkpointing and prices both (`decide.Search.step`)."""
    from dataclasses import replace

    from peftplan.models import get_spec
    from peftplan.planner.memory import price, step_model

    method = get_method("lora")
    cfg = method.make_config()
    spec, ctx, _ = image_context(get_spec(VLM), TrainContext(seq_len=4096, batch_size=2, grad_checkpointing=False),
                                 image_size="791x1024", images=None, tokens=None, train_vision=train_vision)
    built_without = step_model(spec, method, cfg, ctx)
    for ckpt in (False, True):
        direct = step_model(spec, method, cfg, replace(ctx, grad_checkpointing=ckpt))
        recontexted = replace(built_without, ctx=replace(ctx, grad_checkpointing=ckpt))
        assert price(recontexted, 2, 4096) == price(direct, 2, 4096)
