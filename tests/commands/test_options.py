"""The option groups `methods`, `plan` and `trace` share, and the keywords `peftplan.plan` takes."""

from __future__ import annotations

from dataclasses import fields

import pytest

import peftplan
from peftplan.api import PlanRequest, method_configs
from peftplan.commands._options import KnobOptions, MethodOptions
from peftplan.planner.stacks import KNOB_NAMES


def test_every_stack_knob_is_an_option() -> None:
    assert sorted(f.name for f in fields(KnobOptions)) == sorted(KNOB_NAMES)


def test_method_options_are_what_the_api_takes() -> None:
    names = [f.name for f in fields(MethodOptions)]
    assert set(names) <= set(PlanRequest.model_fields)
    assert method_configs(**MethodOptions(methods=["lora"], rank=4).to_dict())[0][1].rank == 4


def test_the_python_api_refuses_an_unknown_keyword() -> None:
    with pytest.raises(TypeError, match="'attn'"):  # the public spelling is attention=
        peftplan.plan("gpt2", attn="sdpa")
