"""Every method on a tiny random model: apply, one training step lowers the loss, save, reload into a
fresh base with the same outputs, and merge (where mergeable) with outputs equal to the unmerged model."""

from __future__ import annotations

import pytest
import torch

from peftplan.methods import get_method, method_names
from peftplan.methods.base import load_adapted
from peftplan.models.build import build_model
from tests.conftest import TINY_BERT, TINY_LLAMA

# Small enough for a tiny model; the defaults (e.g. VeRA's r=256) are sized for real ones.
TINY_CONFIGS: dict[str, dict] = {
    "lora": {"rank": 4}, "qlora": {"rank": 4}, "dora": {"rank": 4}, "qdora": {"rank": 4},
    "rslora": {"rank": 4}, "loha": {"rank": 4}, "lokr": {"rank": 4}, "vera": {"rank": 8},
    "prefix": {"virtual_tokens": 4}, "prompt": {"virtual_tokens": 4}, "adapter": {"bottleneck": 8},
}


def fresh_base(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config, device="cpu", dtype=torch.float32)


def batch(vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()


@pytest.mark.parametrize("method_name", method_names())
def test_round_trip(method_name: str, tmp_path) -> None:
    config = TINY_BERT if method_name == "bitfit" else TINY_LLAMA
    method = get_method(method_name)
    cfg = method.make_config(**TINY_CONFIGS.get(method_name, {}))
    inputs = batch(config["vocab_size"])

    model = method.apply(fresh_base(config), cfg)
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

    trained = logits(model, inputs)
    method.save(model, tmp_path / "saved", cfg)
    assert list((tmp_path / "saved").glob("*.safetensors")), "weights must be saved as safetensors"
    reloaded = load_adapted(fresh_base(config), tmp_path / "saved")
    torch.testing.assert_close(logits(reloaded, inputs), trained, rtol=0, atol=1e-6)

    if method.mergeable:
        merged = method.merge(reloaded)
        torch.testing.assert_close(logits(merged, inputs), trained, rtol=0, atol=1e-5)
    else:
        with pytest.raises(Exception, match="cannot be merged"):
            method.merge(reloaded)
