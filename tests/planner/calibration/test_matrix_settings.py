"""Calibration beyond the defaults: eager attention, fp32 and fp16 steps, and every other optimizer.

Four architectures whose attention and dtypes differ (Llama: softmax in fp32; Phi-2: parallel blocks;
GPT-2: plain softmax plus a causal float mask; RoBERTa: no mask, no cast back) x LoRA, QLoRA and full
fine-tuning x each setting x checkpointing off/on, at 512 x 2 (GPT-2 and RoBERTa: their scaled length).
"""

import pytest

from peftplan.planner.trace_calibrate import seq_lens_for
from tests.planner.calibration.matrix import check_cell

MODELS = ("meta-llama/Llama-3.2-1B", "microsoft/phi-2", "openai-community/gpt2", "FacebookAI/roberta-base")
SETTINGS = (
    {"attention": "eager"},
    {"dtype": "fp32"},
    {"dtype": "fp16"},
    {"optimizer": "adamw-fp32"},
    {"optimizer": "adamw8bit"},
    {"optimizer": "sgd-momentum"},
    {"optimizer": "adafactor"},
)
CELLS = [
    pytest.param(model, method, setting, ckpt, id=f"{model.split('/')[1]}-{method}-{'-'.join(setting.values())}-"
                 f"{'ckpt' if ckpt else 'nockpt'}")
    for model in MODELS
    for method in ("lora", "qlora", "full")
    for setting in SETTINGS
    for ckpt in (False, True)
]


@pytest.mark.parametrize(("model_id", "method", "setting", "ckpt"), CELLS)
def test_analytic_within_tolerance_of_trace(model_id: str, method: str, setting: dict[str, str], ckpt: bool) -> None:
    seq = seq_lens_for(model_id, (512, 2048))[0]
    check_cell(model_id, method, ckpt, seq, 2, **setting)
