"""Target-module selection shared by every method that adapts Linear layers.

Targets are module names (peft's rule: the full name, or a suffix after a dot), a peft-style regex
string, or the presets `attn`, `mlp` and `all-linear`. `all-linear` follows peft exactly: every
Linear/Conv1D except the output (LM head) layer. `attn` and `mlp` stay inside the main text stack.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from peftplan.errors import BadInputError, UnknownNameError, UnsupportedError
from peftplan.methods.moe_targets import (
    REWRITE_MAPPING,
    ParamTarget,
    Selection,
    apply_rewrite,
    explicit_params,
    parameter_names,
    preset_params,
    rewrite_pattern,
)
from peftplan.models.spec import LinearInfo, ModelSpec

PRESETS = ("attn", "mlp", "all-linear")


class UnusableTargetError(UnsupportedError):
    """A target no method can adapt on this model (it selects no Linear layer).

    It is bad input whatever the method, so a plan over several methods raises it rather than
    skipping every targeted method (which would silently change the advice).
    """


class UnknownTargetError(UnknownNameError, UnusableTargetError):
    """A target that names no module of the model at all (a typo), with a did-you-mean."""


def parse_targets(value: str | Sequence[str]) -> list[str]:
    """`"q_proj,v_proj"` or `["q_proj", "v_proj"]` -> a list of names (whitespace stripped)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise BadInputError("targets must name at least one module or preset (attn, mlp, all-linear)")
    return names


def _matches_name(linear: LinearInfo, target: str) -> bool:
    return linear.name == target or linear.name.endswith("." + target)


def _preset(spec: ModelSpec, preset: str) -> list[LinearInfo]:
    """A preset's Linears. A VLM's frozen vision tower (`ModelSpec.frozen`) is left out: presets then adapt
    the language model only; with the tower trained, `all-linear` is peft's own (the tower and merger too)."""
    if preset == "all-linear":
        return [lin for lin in spec.linears if lin.role != "output" and not spec.is_frozen(lin.name)]
    return [lin for lin in spec.linears if lin.in_block and lin.role == preset]


def module_names(spec: ModelSpec) -> set[str]:
    """Every module name of the model (containers too), as peft walks them."""
    names: set[str] = set()
    for param in spec.params:
        parts = param.name.split(".")[:-1]
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _not_linear(spec: ModelSpec, target: str, found: list[str]) -> UnusableTargetError:
    return UnusableTargetError(
        f"target {target!r} names {found[0]}{' ...' if len(found) > 1 else ''} of "
        f"{spec.model_id or spec.architecture}, which is not a Linear layer; only Linear layers are adapted"
    )


def select_linears(
    spec: ModelSpec, targets: Sequence[str], *, regex: str | None = None, extra: Sequence[str] = (),
) -> list[LinearInfo]:
    """The Linear layers a target list (or a peft regex) selects, in model order.

    Raises:
        UnknownTargetError: a target (or the regex) that matches no module of this model at all.
        UnusableTargetError: a target that names only modules that are not Linear layers (an
            embedding, a norm, a whole block), or a preset that selects nothing on this model.
    """
    model = spec.model_id or spec.architecture
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise BadInputError(f"target regex {regex!r} is invalid: {exc}") from None
        chosen = {lin.name for lin in spec.linears if pattern.fullmatch(lin.name)}
        if not chosen:
            others = sorted(name for name in module_names(spec) if pattern.fullmatch(name))
            if others:
                raise _not_linear(spec, f"re:{regex}", others)
            example = next((lin.name for lin in spec.linears if lin.in_block), "")
            raise UnknownTargetError(
                "target regex", regex, [],
                hint=f"It matches no module of {model} (peft matches the whole module name, e.g. {example}).",
            )
    else:
        chosen = set()
        for target in targets:
            hits = _preset(spec, target) if target in PRESETS else [
                lin for lin in spec.linears if _matches_name(lin, target)
            ]
            if not hits and target in PRESETS:
                raise UnusableTargetError(
                    f"preset {target!r} selects no Linear layer of {model} "
                    "(e.g. MoE experts stored as fused parameters); name modules or use another preset"
                )
            if not hits:
                others = sorted(n for n in module_names(spec) if n == target or n.endswith("." + target))
                if others:
                    raise _not_linear(spec, target, others)
                leaves = sorted({lin.leaf for lin in spec.linears if lin.role != "output"})
                params = f"; expert parameters: {', '.join(extra)}" if extra else ""
                raise UnknownTargetError(
                    "target module",
                    target,
                    [*PRESETS, *leaves, *extra],
                    hint=f"Linear layers of {model}: {', '.join(leaves)}{params}.",
                )
            chosen.update(lin.name for lin in hits)
    return [lin for lin in spec.linears if lin.name in chosen]


def peft_target_pattern(spec: ModelSpec, selected: Sequence[LinearInfo]) -> str | list[str]:
    """What to give peft as `target_modules` so that it selects exactly `selected`.

    A compact regex (layer indices generalised) when that is exact, else the explicit name list.
    """
    names = {lin.name for lin in selected}
    generalised = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names})
    regex = "(?:" + "|".join(generalised) + ")"
    compiled = re.compile(regex)
    if {lin.name for lin in spec.linears if compiled.fullmatch(lin.name)} == names:
        return regex
    return sorted(names)


def select_targets(
    spec: ModelSpec, targets: Sequence[str], *, regex: str | None = None, parameters: bool = True,
) -> Selection:
    """The Linears and the parameters (fused MoE experts, routers) a target list selects, as peft adapts them.

    `parameters` False: the method cannot adapt parameters (peft's DoRA), so presets keep to Linears and a
    target that names parameters is refused. On a dense model this is `select_linears`.

    Raises:
        UnknownTargetError: a name that matches no module or parameter (did-you-mean over both).
        UnsupportedError: parameters for a method that cannot adapt them, or half of a fused projection.
    """
    candidates = parameter_names(spec)
    if not candidates:
        return Selection(tuple(select_linears(spec, targets, regex=regex)))
    if regex is not None:
        return _check_parameters(spec, apply_rewrite(spec, [], select_linears(spec, [], regex=regex), []), parameters)
    pattern = rewrite_pattern(spec)
    old_names = REWRITE_MAPPING[pattern] if pattern is not None else {}
    chosen: set[str] = set()
    params: list[ParamTarget] = []
    for target in targets:
        if target in ("mlp", "all-linear"):
            hits = _preset(spec, target)
            added = preset_params(spec) if parameters else []
            if not hits and not added:
                select_linears(spec, [target])  # raises: the preset selects nothing
            chosen.update(lin.name for lin in hits)
            params += added
            continue
        if target in PRESETS:
            chosen.update(lin.name for lin in select_linears(spec, [target]))
            continue
        named = explicit_params(spec, target)
        hits = [lin for lin in spec.linears if _matches_name(lin, target)]
        if named and not parameters:
            raise UnsupportedError(f"target {target!r} names expert parameters, which peft's LoRA adapts through "
                                   "target_parameters; this method (DoRA) cannot: use lora, qlora or rslora")
        if not named and not hits and not any(target == o or target.endswith("." + o) for o in old_names):
            select_linears(spec, [target], extra=candidates)  # raises with a did-you-mean
        chosen.update(lin.name for lin in hits)
        params += named
    linears = [lin for lin in spec.linears if lin.name in chosen]
    return _check_parameters(spec, apply_rewrite(spec, targets, linears, params), parameters)


def _check_parameters(spec: ModelSpec, selection: Selection, parameters: bool) -> Selection:
    if selection.params and not parameters:
        raise UnsupportedError(
            f"on {spec.model_type} peft rewrites these targets to the fused experts (target_parameters), where "
            "DoRA does not work; target attention layers only (--targets attn)"
        )
    if not selection.linears and not selection.params:
        raise UnusableTargetError(f"the targets select nothing peft can adapt on {spec.model_id or spec.architecture}")
    return selection
