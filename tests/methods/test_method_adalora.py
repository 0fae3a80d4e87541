"""AdaLoRA: the method contract (`tests/methods/contract.py`), plus what it needs beyond LoRA: a frozen
`ranknum`, the rank allocator after each step (its state priced as `method_state`), `total_step` from the run,
and reading peft's own adapter_config.json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from peftplan.errors import BadInputError
from peftplan.methods import get_method
from peftplan.methods.peft_config import read_peft_config
from peftplan.models import spec_from_config
from peftplan.models.build import build_model
from tests.conftest import TINY_LLAMA
from tests.methods.contract import MethodContract, _batch


class TestAdaLora(MethodContract):
    name = "adalora"
    # init_r from 2 to 64 on every preset, zipped like the LoRA family's rows.
    rows = ({"init_r": 2, "target_r": 1, "targets": "attn"}, {"init_r": 12, "targets": "mlp"},
            {"init_r": 64, "target_r": 32, "targets": "all-linear"})
    tiny = {"init_r": 6, "target_r": 4}


def _peft_count(dtype: torch.dtype) -> tuple[int, int]:
    """peft's own trainable count of its AdaLoRA on the tiny Llama, and how much of it is `ranknum`."""
    from peft import AdaLoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(build_model(TINY_LLAMA, device="cpu", dtype=dtype),
                               AdaLoraConfig(init_r=6, target_r=4, target_modules="all-linear", total_step=10))
    ranknum = sum(p.numel() for n, p in model.named_parameters() if ".ranknum." in n and p.requires_grad)
    return model.get_nb_trainable_parameters()[0], ranknum


def test_ranknum_stays_frozen_whatever_the_base_dtype() -> None:
    method = get_method("adalora")
    cfg = method.make_config(init_r=6, target_r=4)
    expected = method.trainable_params(spec_from_config(TINY_LLAMA), cfg)
    assert _peft_count(torch.float32) == (expected, 0)  # peft leaves it frozen on an fp32 CPU base
    peft_bf16, trainable_ranknum = _peft_count(torch.bfloat16)  # but re-wraps it trainable when casting
    assert trainable_ranknum == 14 and peft_bf16 == expected + 14  # one per adapted Linear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = method.apply(build_model(TINY_LLAMA, device="cpu", dtype=torch.bfloat16), cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_rank_allocator_state_is_what_the_plan_prices() -> None:
    method = get_method("adalora")
    cfg = method.for_steps(method.make_config(init_r=6, target_r=4), 3)
    assert cfg.total_step == 3
    torch.manual_seed(0)
    model = method.apply(build_model(TINY_LLAMA, device="cpu", dtype=torch.float32), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for step in range(2):
        model(**_batch(TINY_LLAMA["vocab_size"])).loss.backward()
        optimizer.step()
        method.after_optimizer_step(model, step)
        optimizer.zero_grad(set_to_none=True)
    allocator = model.base_model.rankallocator
    held = method.state_tensors(model)
    assert {id(t) for t in held} == {id(t) for scores in (allocator.ipt, allocator.exp_avg_ipt,
                                                          allocator.exp_avg_unc) for t in scores.values()}
    terms = method.memory_terms(spec_from_config(TINY_LLAMA), cfg)
    assert sum(t.numel() for t in held) == terms.method_state == 3 * terms.adapter_params
    assert model.peft_config["default"].rank_pattern  # step 1 pruned ranks


def test_total_step_comes_from_the_run_unless_the_config_gives_it() -> None:
    method = get_method("adalora")
    assert method.for_steps(method.make_config(total_step=50), 7).total_step == 50
    with pytest.raises(BadInputError, match="budgeting phase"):
        method.for_steps(method.make_config(tinit=5, tfinal=5), 10)
    with pytest.raises(BadInputError, match="below init_r"):
        method.make_config(init_r=8, target_r=8)


def test_reads_the_adapter_config_peft_writes(tmp_path: Path) -> None:
    method = get_method("adalora")
    spec = spec_from_config(TINY_LLAMA)
    cfg = method.make_config(init_r=6, target_r=4, tinit=2, tfinal=3, delta_t=5, orth_reg_weight=0.1, total_step=40)
    (tmp_path / "adapter_config.json").write_text(json.dumps(method.peft_config(spec, cfg).to_dict(), default=sorted))
    read_method, read_cfg = read_peft_config(tmp_path)
    assert read_method is method
    assert read_cfg.model_copy(update={"targets": cfg.targets}) == cfg
    assert read_method.trainable_params(spec, read_cfg) == method.trainable_params(spec, cfg)
