"""Targets on mixture-of-experts models: fused expert parameters and routers, as peft reaches them.

In transformers 5 the experts are fused 3D parameters ([E, d1, d2]) and the router is a bare weight
[E, H]: not Linears, so LoRA reaches them only through peft's `target_parameters` (a name matches a
parameter when it is the full name or a suffix after a dot). peft reads a 3D parameter as
[E, in, out] and trains lora_A [r·E, in] and lora_B [out, r·E]: r·E·(d1 + d2) per parameter.

**peft's own rewrite.** For the model types transformers converts with the `mixtral` or `qwen2_moe`
pattern (`REWRITE_TYPES`), peft 0.21 rewrites a LoRA config's `target_modules` before matching
(`peft/utils/transformers_weight_conversion.py: _convert_peft_config_moe`): a target that is, or ends
with, a v4 expert name (`w1`/`w3`, `gate_proj`/`up_proj`, `w2`/`down_proj`, `gate`) becomes the fused
parameter it now lives in (`gate_up_proj`, `down_proj`, `gate.weight`) in every MoE block, and when both
halves of `gate_up_proj` are named it is trained at rank 2r with alpha 2α (scaling unchanged). A dense
MLP's or shared expert's `gate_proj` ends with the same name, so it is rewritten too and loses its
adapter; `all-linear` adds every v4 name. peftplan selects exactly what peft would, and hands peft the
result already rewritten.

**Presets.** `mlp` and `all-linear` on a fused MoE include the routed experts (`gate_up_proj` at rank
2r, the rank a v4 LoRA of r on each of gate and up adds up to, and `down_proj` at r) and the routers
(rank r): what peft's `all-linear` does on the rewrite types, and the same meaning on the others
(gpt-oss). Methods that cannot adapt parameters (DoRA: peft refuses it there) get the Linears only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peftplan.errors import UnsupportedError
from peftplan.models.spec import LinearInfo, ModelSpec, ParamInfo

# peft 0.21.2's `_MOE_TARGET_MODULE_MAPPING` and `_MOE_FUSED_TARGETS` (checked against peft by a test).
REWRITE_MAPPING: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"},
}
REWRITE_FUSED: dict[str, dict[str, tuple[str, ...]]] = {
    "mixtral": {"gate_up_proj": ("w1", "w3")},
    "qwen2_moe": {"gate_up_proj": ("gate_proj", "up_proj")},
}
# Model types transformers 5.23 converts with those patterns (peft's `_MODEL_TO_CONVERSION_PATTERN`
# restricted to them, with a checkpoint conversion mapping); checked against peft by a test.
REWRITE_TYPES: dict[str, str] = {
    "mixtral": "mixtral", "minimax": "mixtral", "minimax_m2": "mixtral",
    **{t: "qwen2_moe" for t in (
        "Dots3NoteTextModel", "afmoe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1", "ernie4_5_moe",
        "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "glm4v_moe", "longcat_flash", "solar_open", "mellum",
        "qwen3_moe", "beam", "qwen3_omni_moe", "qwen3_omni_moe_thinker", "qwen3_omni_moe_text", "qwen3_next",
        "hunyuan_v1_moe", "flex_olmo", "olmoe", "exaone_moe", "cohere2_moe", "UnlimitedOcrTextModel",
    )},
}
FUSED_GATE_UP = "gate_up_proj"  # the fused gate and up projections (concatenated, or interleaved in gpt-oss)
RANK_PATTERN_KEY = r".*\.gate_up_proj"  # peft's rank_pattern / alpha_pattern key for it


@dataclass(frozen=True)
class ParamTarget:
    """A parameter LoRA adapts through `target_parameters`, at `rank_factor` times the configured rank."""

    param: ParamInfo
    rank_factor: int = 1

    @property
    def experts(self) -> int:
        return self.param.shape[0] if len(self.param.shape) == 3 else 1

    @property
    def in_out(self) -> tuple[int, int]:
        """(in, out) as peft reads the parameter: [E, in, out] for 3D, [out, in] for 2D."""
        shape = self.param.shape
        return (shape[1], shape[2]) if len(shape) == 3 else (shape[1], shape[0])

    def trainable(self, rank: int) -> int:
        d_in, d_out = self.in_out
        return rank * self.rank_factor * self.experts * (d_in + d_out)


@dataclass(frozen=True)
class Selection:
    """What a target list adapts: Linears (`target_modules`) and parameters (`target_parameters`)."""

    linears: tuple[LinearInfo, ...]
    params: tuple[ParamTarget, ...] = ()
    rewritten: tuple[str, ...] = ()  # Linears peft's rewrite moved to the fused experts (they keep no adapter)

    @property
    def doubled(self) -> bool:
        return any(p.rank_factor == 2 for p in self.params)


def parameter_candidates(spec: ModelSpec) -> list[ParamInfo]:
    """Parameters LoRA can target on an MoE model: fused 3D expert weights and the routers' weights."""
    if spec.moe is None or not spec.moe.fused:
        return []
    out: list[ParamInfo] = []
    for layer in spec.moe.layers:
        if layer.router is not None and not layer.router.linear:
            out.append(ParamInfo(f"{layer.router.name}.weight", (layer.router.out_features, layer.router.in_features)))
        out.extend(p for p in layer.experts if len(p.shape) == 3)
    return out


def parameter_names(spec: ModelSpec) -> list[str]:
    """The short names a user can write for the candidates (`experts.gate_up_proj`, `gate.weight`, ...)."""
    names: set[str] = set()
    for p in parameter_candidates(spec):
        parts = p.name.split(".")
        names.add(".".join(parts[-2:]))
        if parts[-1] != "weight":  # a router is named by its module: `gate.weight`
            names.add(parts[-1])
    return sorted(names)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def rewrite_pattern(spec: ModelSpec) -> str | None:
    """peft's rewrite pattern for this model (None: peft leaves its targets alone)."""
    if spec.moe is None or not spec.moe.fused:
        return None
    return REWRITE_TYPES.get(spec.model_type)


def preset_params(spec: ModelSpec) -> list[ParamTarget]:
    """The parameters `mlp` and `all-linear` add on a fused MoE: routers (r), gate_up (2r), the rest (r)."""
    return [ParamTarget(p, 2 if p.name.endswith("." + FUSED_GATE_UP) else 1) for p in parameter_candidates(spec)]


def explicit_params(spec: ModelSpec, target: str) -> list[ParamTarget]:
    """The candidate parameters a name selects (full name or suffix), at rank r."""
    return [ParamTarget(p) for p in parameter_candidates(spec) if _matches(p.name, target)]


def apply_rewrite(
    spec: ModelSpec, targets: Sequence[str], linears: list[LinearInfo], params: list[ParamTarget],
) -> Selection:
    """peft's rewrite of `targets` and of the selected Linears' names (see the module docstring).

    Raises:
        UnsupportedError: one half of a fused projection named without the other (peft refuses it).
    """
    pattern = rewrite_pattern(spec)
    if pattern is None:
        return Selection(tuple(linears), tuple(_dedupe(spec, params)))
    mapping, fused = REWRITE_MAPPING[pattern], REWRITE_FUSED[pattern]
    named_old: set[str] = set()
    new_leaves: set[str] = set()

    def old_of(name: str) -> str | None:
        return next((old for old in mapping if _matches(name, old)), None)

    for target in targets:
        old = old_of(target)
        if old is not None:
            named_old.add(old)
            new_leaves.add(mapping[old])
    kept: list[LinearInfo] = []
    rewritten: list[str] = []
    for lin in linears:
        old = old_of(lin.name)
        if old is None:
            kept.append(lin)
        else:
            named_old.add(old)
            new_leaves.add(mapping[old])
            rewritten.append(lin.name)
    if any(p.rank_factor == 2 for p in params):  # a preset: peft's all-linear names every v4 projection
        named_old.update(mapping)
    for new, halves in fused.items():
        present = named_old & set(halves)
        if present and present != set(halves):
            missing = sorted(set(halves) - present)
            raise UnsupportedError(
                f"peft fuses {' and '.join(halves)} into {new} on {spec.model_type}: target {', '.join(missing)} too "
                f"(or name {new})"
            )
    params = params + [t for leaf in sorted(new_leaves) for t in explicit_params(spec, leaf)]
    doubled = {new for new, halves in fused.items() if set(halves) <= named_old}
    params = [ParamTarget(p.param, 2 if any(p.param.name.endswith("." + n) for n in doubled) else 1) for p in params]
    return Selection(tuple(kept), tuple(_dedupe(spec, params)), tuple(rewritten))


def _dedupe(spec: ModelSpec, params: list[ParamTarget]) -> list[ParamTarget]:
    """One target per parameter (the higher rank wins), in model order."""
    by_name: dict[str, ParamTarget] = {}
    for p in params:
        old = by_name.get(p.param.name)
        by_name[p.param.name] = p if old is None or p.rank_factor > old.rank_factor else old
    order = {p.name: i for i, p in enumerate(parameter_candidates(spec))}
    return sorted(by_name.values(), key=lambda t: order.get(t.param.name, -1))


def peft_target_parameters(spec: ModelSpec, chosen: Sequence[ParamTarget]) -> list[str]:
    """`target_parameters` for peft that selects exactly `chosen`: short suffixes where exact, else full names."""
    names = {t.param.name for t in chosen}
    candidates = [p.name for p in parameter_candidates(spec)]
    out: set[str] = set()
    for name in names:
        suffix = ".".join(name.split(".")[-2:])
        if {c for c in candidates if _matches(c, suffix)} <= names:
            out.add(suffix)
        else:
            out.add(name)
    return sorted(out)
