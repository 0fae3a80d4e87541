"""`MethodContract`: the tests every method's test class inherits (`tests/methods/test_method_<name>.py`).

A subclass names its method and its rows: the configs whose analytic count must equal the real apply
on real architectures (built on the meta device), and a config small enough for a tiny random model,
which is applied, trained one step, saved, reloaded and merged (where mergeable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from peftplan.errors import BadInputError
from peftplan.methods import get_method, method_names
from peftplan.methods.base import Method, load_adapted
from peftplan.models import get_spec
from peftplan.models.build import build_model
from tests.conftest import TINY_LLAMA

ARCHITECTURES = [
    "meta-llama/Llama-3.2-3B",
    "Qwen/Qwen2.5-7B",
    "google/gemma-2-2b",
    "microsoft/phi-2",
    "FacebookAI/roberta-base",
    "Qwen/Qwen2-VL-7B-Instruct",
]
# The LoRA family's rows: every rank scale and every preset appears, zipped to keep the matrix fast.
LOW_RANK_ROWS = ({"rank": 1, "targets": "attn"}, {"rank": 8, "targets": "mlp"}, {"rank": 64, "targets": "all-linear"})


class MethodContract:
    """Inherit as `class TestX(MethodContract)` and set `name` (and the rows when the defaults do not fit)."""

    name: ClassVar[str]
    rows: ClassVar[tuple[dict[str, Any], ...]] = ({},)  # configs counted on every architecture
    tiny: ClassVar[dict[str, Any]] = {}  # a config for the tiny random model of the round trip
    tiny_base: ClassVar[dict[str, Any]] = TINY_LLAMA

    @property
    def method(self) -> Method:
        return get_method(self.name)

    def test_registered_consistently(self) -> None:
        method = self.method
        assert method.name == self.name and method.name in method_names()
        assert method.summary
        assert method.traits.inference_overhead in ("none", "unmerged-matmul", "extra-tokens", "extra-layers")
        assert method.make_config() == method.config_cls()
        low, high, recipe = method.lr_range
        assert 0 < low <= recipe <= high

    @pytest.mark.parametrize("model_id", ARCHITECTURES)
    def test_count_equals_real_apply(self, model_id: str) -> None:
        spec = get_spec(model_id)
        method = self.method
        for values in self.rows:
            cfg = method.make_config(**values)
            model = build_model(spec.config)
            try:
                method.check(spec, cfg)
            except BadInputError:
                # Where the analytic side refuses (e.g. BitFit without biases), the real apply refuses too.
                with pytest.raises(BadInputError):
                    method.apply(model, cfg)
                continue
            expected = method.trainable_params(spec, cfg)
            assert expected > 0
            adapted = method.apply(model, cfg)
            assert _trainable(adapted) == expected, (model_id, values)
            terms = method.memory_terms(spec, cfg)
            if terms.trainable_base == "none":  # what the planner prices is what trains
                assert terms.adapter_params == expected, (model_id, values)

    def test_round_trip(self, tmp_path: Path) -> None:
        """Apply, one step lowers the loss, save (safetensors), reload with the same outputs, merge."""
        method = self.method
        cfg = method.make_config(**self.tiny)
        inputs = _batch(self.tiny_base["vocab_size"])
        model = method.apply(_fresh_base(self.tiny_base), cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        model.train()
        loss_before = model(**inputs).loss
        loss_before.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            loss_after = model(**inputs).loss
        assert loss_after.item() < loss_before.item()

        trained = _logits(model, inputs)
        method.save(model, tmp_path / "saved", cfg)
        assert list((tmp_path / "saved").glob("*.safetensors")), "weights must be saved as safetensors"
        reloaded = load_adapted(_fresh_base(self.tiny_base), tmp_path / "saved")
        torch.testing.assert_close(_logits(reloaded, inputs), trained, rtol=0, atol=1e-6)
        if method.traits.mergeable:
            merged = method.merge(reloaded)
            torch.testing.assert_close(_logits(merged, inputs), trained, rtol=0, atol=1e-5)
        else:
            with pytest.raises(Exception, match="cannot be merged"):
                method.merge(reloaded)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _fresh_base(config: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config, device="cpu", dtype=torch.float32)


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
