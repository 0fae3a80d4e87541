"""Options shared by commands that take a model and method knobs (`methods`, `plan`, `trace`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from peftplan.errors import BadInputError

if TYPE_CHECKING:
    from peftplan.methods.base import Method, MethodConfig

FORMATS = ("table", "json", "markdown")

# The method knobs `methods`, `plan` and `trace` share (see `method_configs`).
MethodOpt = Annotated[list[str] | None, typer.Option("--method", help="Restrict to these methods (repeat or comma-separate).")]
RankOpt = Annotated[int | None, typer.Option(help="LoRA-family rank.")]
AlphaOpt = Annotated[float | None, typer.Option(help="LoRA-family alpha.")]
TargetsOpt = Annotated[str | None, typer.Option(help="Module names, re:<regex>, or presets attn, mlp, all-linear.")]
VirtualTokensOpt = Annotated[int | None, typer.Option("--virtual-tokens", help="Prefix/prompt tuning tokens.")]
QuantOpt = Annotated[str | None, typer.Option(help="Base quantization: none, nf4, fp4, int8.")]
BottleneckOpt = Annotated[int | None, typer.Option(help="Bottleneck adapter width.")]
PeftConfigOpt = Annotated[Path | None, typer.Option("--peft-config", help="Use exactly this peft adapter_config.json.")]


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt not in allowed:
        from peftplan.errors import UnknownNameError

        raise UnknownNameError("format", fmt, allowed, hint=f"Use one of: {', '.join(allowed)}.")
    return fmt


def split_names(values: list[str] | None) -> list[str]:
    """`--method lora,dora --method ia3` -> ["lora", "dora", "ia3"]."""
    names: list[str] = []
    for value in values or []:
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return names


def method_configs(
    methods: list[str] | None,
    *,
    rank: int | None = None,
    alpha: float | None = None,
    targets: str | None = None,
    virtual_tokens: int | None = None,
    quant: str | None = None,
    bottleneck: int | None = None,
    peft_config: Path | None = None,
) -> list[tuple[Method, MethodConfig]]:
    """The methods to plan with their configs; a knob applies to every method whose config has it.

    Raises:
        BadInputError: unknown method, invalid knob value, or a bad peft config file.
    """
    from peftplan.methods import all_methods, get_method

    if peft_config is not None:
        from peftplan.methods.peft_config import read_peft_config

        if methods:
            raise BadInputError("--peft-config implies its own method; do not combine it with --method")
        return [read_peft_config(peft_config)]
    chosen = [get_method(name) for name in split_names(methods)] or all_methods()
    knobs: dict[str, Any] = {
        "rank": rank,
        "alpha": alpha,
        "targets": targets,
        "virtual_tokens": virtual_tokens,
        "quant": quant,
        "bottleneck": bottleneck,
    }
    given = {k: v for k, v in knobs.items() if v is not None}
    result = []
    for method in chosen:
        fields = method.config_cls.model_fields
        result.append((method, method.make_config(**{k: v for k, v in given.items() if k in fields})))
    if methods and given:
        unused = [k for k in given if not any(k in m.config_cls.model_fields for m, _ in result)]
        if unused:
            names = ", ".join(m.name for m, _ in result)
            raise BadInputError(f"--{unused[0].replace('_', '-')} does not apply to {names}")
    return result


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
