"""Calibration cells, a tiny random Qwen2-VL with images: the analytic model against the trace within the matrix
tolerance.

The language model is Qwen2-VL-7B's with small widths (hidden 256, 4 blocks, 2 heads of 128 as mrope's sections need); the vision tower keeps the
7B's patch size, merge and MLP ratio with 2 blocks of width 128. Each cell prices and traces one step with
images (`--image-tokens`, `--images-per-example`): LoRA, QLoRA and full fine-tuning, the tower frozen or
trained (`--train-vision`), checkpointing off (one image of 64 tokens, 256 x 1) and on (two of 100, 512 x 2).
All within 0.1% but QLoRA without checkpointing (about -1%, at the loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftplan.models.catalog import catalog_config_dict
from tests.planner.calibration.matrix import check_spec_cell

BASE = catalog_config_dict("Qwen/Qwen2-VL-7B-Instruct")
TINY = {**BASE, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 2048, "max_window_layers": 4, "image_token_id": 2000,
        "video_token_id": 2001, "vision_start_token_id": 2002, "vision_end_token_id": 2003, "vision_token_id": 2004,
        "bos_token_id": 1, "eos_token_id": 2,
        "vision_config": {**BASE["vision_config"], "depth": 2, "embed_dim": 128, "num_heads": 4, "hidden_size": 256}}
# (seq, batch, images per example, tokens per image): one image without checkpointing, two with it.
SHAPES = {False: (256, 1, 1, 64), True: (512, 2, 2, 100)}
CELLS = [
    pytest.param(method, train_vision, ckpt, SHAPES[ckpt],
                 id=f"{method}-{'tower' if train_vision else 'frozen'}-{'ckpt' if ckpt else 'nockpt'}")
    for method in ("lora", "qlora", "full")
    for train_vision in (False, True)
    for ckpt in (False, True)
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory: Path = tmp_path_factory.mktemp("qwen2-vl")
    (directory / "config.json").write_text(json.dumps(TINY))
    return str(directory)


@pytest.mark.parametrize(("method_name", "train_vision", "ckpt", "shape"), CELLS)
def test_images_within_tolerance_of_trace(tiny_dir: str, method_name: str, train_vision: bool, ckpt: bool,
                                          shape: tuple[int, int, int, int]) -> None:
    from peftplan.methods import get_method
    from peftplan.models import get_spec
    from peftplan.planner.context import TrainContext
    from peftplan.planner.vision import image_context

    seq, batch, images, tokens = shape
    ctx = TrainContext(seq_len=seq, batch_size=batch, grad_checkpointing=ckpt, device="cpu")
    spec, ctx, _ = image_context(get_spec(tiny_dir), ctx, image_size=None, images=images, tokens=tokens,
                                 train_vision=train_vision)
    check_spec_cell(spec, method_name, get_method(method_name).make_config(), ctx)
