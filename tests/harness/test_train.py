"""The training loop on a tiny random Llama: it learns, it measures a step's memory, it enforces a cap, and
QLoRA gradients stay exact after an eval forward (the avx512_bf16 repacking pitfall in STACK.md)."""

from __future__ import annotations

import pytest
import torch

from peftplan.harness.data import Example
from peftplan.harness.loading import byte_tokenizer
from peftplan.harness.measure import MemoryCapExceeded, StepMemoryProbe
from peftplan.harness.tasks import Encoded, PromptFormatter
from peftplan.harness.train import TrainSettings, evaluate_loss, train
from peftplan.methods import get_method
from peftplan.models.build import build_model
from tests.harness.qlora_reference import nonzero_lora_b, quantized_and_reference_grads
from tests.harness.tiny import TINY_MODEL

torch.set_num_threads(1)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY_MODEL, device="cpu", dtype=torch.float32)


def items(n: int = 64) -> list[Encoded]:
    from peftplan.harness.data import TaskInfo

    formatter = PromptFormatter(byte_tokenizer(), TaskInfo("t", "classification", "", False, False, None, "", 0, 0), 32)
    return [formatter.encode(Example(f"n{i}:", "even" if i % 2 == 0 else "odd"), with_eos=False) for i in range(n)]


def settings(**changes) -> TrainSettings:
    values = {"steps": 12, "batch_size": 8, "grad_accum": 1, "lr": 3e-2, "eval_every": 6, "autocast": None}
    return TrainSettings(**{**values, **changes})


def test_lora_training_lowers_the_eval_loss_and_measures_a_step() -> None:
    method = get_method("lora")
    model = method.apply(tiny_model(), method.make_config(rank=4))
    data = items()
    before = evaluate_loss(model, data[:16], 0, batch_size=8, device="cpu", autocast=None)
    probe = StepMemoryProbe(model, "cpu", steps=12)
    stats = train(model, data[16:], data[:16], settings(grad_accum=2), pad=0, profiler=probe)
    assert stats.steps == 12 and stats.tokens > 0 and stats.tokens_per_s
    assert [step for step, _ in stats.intermediate] == [6, 12]
    assert stats.eval_loss < before - 0.5
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert probe.result().peak_allocated > weights  # weights + adapter grads + Adam states + activations


class StopAt:
    def __init__(self, step: int) -> None:
        self.step, self.steps = step, []

    def on_step(self, step: int, loss: float) -> None:
        self.steps.append(step)

    def on_eval(self, step: int, eval_loss: float) -> bool:
        return step >= self.step


def test_observer_can_stop_training_early() -> None:
    method = get_method("ia3")
    model = method.apply(tiny_model(), method.make_config())
    observer = StopAt(6)
    stats = train(model, items(), items()[:8], settings(), pad=0, observer=observer)
    assert stats.stopped_early and stats.steps == 6 and observer.steps == list(range(1, 7))


def test_memory_cap_raises_at_the_crossing_allocation() -> None:
    method = get_method("lora")
    model = method.apply(tiny_model(), method.make_config(rank=4))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    probe = StepMemoryProbe(model, "cpu", cap=weights + 10_000, steps=4)
    with pytest.raises(MemoryCapExceeded, match="exceed the memory cap"):
        train(model, items(), items()[:8], settings(steps=4), pad=0, profiler=probe)


def test_qlora_gradients_after_an_eval_forward_match_the_dequantized_weight() -> None:
    """An eval-mode no-grad forward (what evaluate_loss runs) must not corrupt the next LoRA gradients."""
    import bitsandbytes as bnb

    from peftplan.harness.tasks import collate

    method = get_method("qlora")
    model = method.apply(tiny_model(), method.make_config(rank=4, quant="nf4"))
    nonzero_lora_b(model)
    data = items(16)
    evaluate_loss(model, data, 0, batch_size=8, device="cpu", autocast="bf16")
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.support_avx512bf16_for_cpu is False for m in quantized)

    grads, reference = quantized_and_reference_grads(model, collate(data[:8], 0))
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(reference[name], grad, rtol=1e-3, atol=1e-6)
