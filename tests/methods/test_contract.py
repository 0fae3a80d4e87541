"""Registry contract: for every method, the analytic trainable count equals the real apply, exactly.

Real architectures from the catalog are built on the meta device (no weights) and the real method is
applied through peft (or the hand-written module); the count after apply is the sum over requires_grad.
"""

from __future__ import annotations

import pytest

from peftplan.errors import BadInputError
from peftplan.methods import all_methods, get_method, method_names
from peftplan.models import get_spec
from peftplan.models.build import build_model

ARCHITECTURES = [
    "meta-llama/Llama-3.2-3B",
    "Qwen/Qwen2.5-7B",
    "google/gemma-2-2b",
    "microsoft/phi-2",
    "FacebookAI/roberta-base",
    "Qwen/Qwen2-VL-7B-Instruct",
]
LOW_RANK = {"lora", "qlora", "dora", "qdora", "rslora", "loha", "lokr", "vera"}
# Every rank and every preset appears; zipped to keep the matrix fast.
LOW_RANK_CONFIGS = [{"rank": 1, "targets": "attn"}, {"rank": 8, "targets": "mlp"}, {"rank": 64, "targets": "all-linear"}]


def configs_for(name: str) -> list[dict]:
    if name in LOW_RANK:
        return LOW_RANK_CONFIGS
    if name == "ia3":
        return [{"targets": preset} for preset in ("attn", "mlp", "all-linear")]
    if name in ("prefix", "prompt"):
        return [{"virtual_tokens": 10}, {"virtual_tokens": 100}]
    if name == "adapter":
        return [{"bottleneck": 16}, {"bottleneck": 64}]
    return [{}]


def real_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_id", ARCHITECTURES)
@pytest.mark.parametrize("method_name", method_names())
def test_analytic_count_equals_real_apply(model_id: str, method_name: str) -> None:
    spec = get_spec(model_id)
    method = get_method(method_name)
    for values in configs_for(method_name):
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
        assert real_trainable(adapted) == expected, (model_id, method_name, values)


def test_registry_modules_are_consistent() -> None:
    for method in all_methods():
        assert method.name in method_names()
        assert method.summary and method.inference_overhead in ("none", "unmerged-matmul", "extra-tokens", "extra-layers")
        assert method.make_config() == method.config_cls()


def test_full_count_is_total_params() -> None:
    spec = get_spec("meta-llama/Llama-3.2-3B")
    assert get_method("full").trainable_params(spec, get_method("full").make_config()) == 3_212_749_824


def test_bitfit_counts_every_bias_of_roberta() -> None:
    spec = get_spec("FacebookAI/roberta-base")
    n = get_method("bitfit").trainable_params(spec, get_method("bitfit").make_config())
    assert n == sum(p.numel for p in spec.params if p.name.endswith(".bias") and p.tied_to is None)
    assert 100_000 < n < 200_000  # BitFit's ~0.08% of RoBERTa-base
