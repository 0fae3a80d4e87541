"""The suite shapes each method's search space: choices, ranges, fixed settings, lr, and the recipe."""

from __future__ import annotations

import optuna
import pytest

from peftplan.harness.space import recipe_params, sample_config, search_distributions
from peftplan.harness.suite import parse_suite
from tests.harness.tiny import TINY_SUITE, deep_update


def suite_with(method: dict) -> tuple:
    suite = parse_suite(deep_update(TINY_SUITE, {"methods": [method]}))
    return suite, suite.methods[0]


def test_suite_space_overrides_the_methods_own() -> None:
    suite, entry = suite_with({"name": "lora", "space": {"rank": [2, 3], "lr": {"low": 1.0e-3, "high": 1.0e-2,
                                                                               "log": True}},
                               "fixed": {"targets": ["q_proj", "v_proj"], "quant": "none"}})
    dists = search_distributions(entry, suite)
    assert dists["rank"].choices == (2, 3)
    assert "targets" not in dists  # fixed settings are not searched
    assert (dists["lr"].low, dists["lr"].high) == (1e-3, 1e-2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        sampled = sample_config(study.ask(), entry, suite)
        assert sampled.config.rank in (2, 3)
        assert sampled.config.targets == ["q_proj", "v_proj"]
        assert 1e-3 <= sampled.lr <= 1e-2


def test_settings_the_method_does_not_search_are_merged_into_its_config() -> None:
    suite, entry = suite_with({"name": "lora", "space": {"quant": ["none", "nf4"]}, "fixed": {"alpha": 7.0}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {sample_config(study.ask(), entry, suite).config.quant for _ in range(12)}
    assert seen == {"none", "nf4"}
    assert sample_config(study.ask(), entry, suite).config.alpha == 7.0


def test_integer_range_and_fixed_lr() -> None:
    suite, entry = suite_with({"name": "prompt", "space": {"virtual_tokens": {"low": 4, "high": 12}},
                               "fixed": {"lr": 0.05}})
    sampled = sample_config(optuna.create_study().ask(), entry, suite)
    assert isinstance(sampled.config.virtual_tokens, int) and 4 <= sampled.config.virtual_tokens <= 12
    assert sampled.lr == 0.05


def test_literature_recipe_is_lora_r16_alpha32_all_linear_lr_1e4() -> None:
    suite, entry = suite_with({"name": "lora"})
    assert recipe_params(entry, suite) == {"rank": 16, "alpha_ratio": 2, "targets": "all-linear", "dropout": 0.0,
                                           "lr": 1e-4}
    # Values outside the suite's space are left to the sampler.
    suite, entry = suite_with({"name": "lora", "space": {"rank": [4, 8]}})
    assert "rank" not in recipe_params(entry, suite)


@pytest.mark.parametrize("name", ["ia3", "prompt", "vera", "full", "bitfit"])
def test_every_method_has_a_recipe_inside_its_space(name: str) -> None:
    suite, entry = suite_with({"name": name})
    params = recipe_params(entry, suite)
    assert set(params) == set(search_distributions(entry, suite))
