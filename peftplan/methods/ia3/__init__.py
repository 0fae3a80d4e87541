"""IA3: learned vectors that rescale activations (Liu et al., 2022).

As in peft, a targeted Linear's vector scales its output, except for the "feed-forward" targets,
whose vector scales their input. `feedforward` names those as peft's `feedforward_modules` does;
left unset, they are the MLP down projections.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator

from peftplan.methods._peft import (
    REGEX_PREFIX,
    PeftMethod,
    TargetedConfig,
    selected_linears,
    targets_from_peft,
)
from peftplan.methods._peft import task_type as peft_task_type
from peftplan.methods.base import PeftFields, Traits
from peftplan.methods.ia3.replay import IA3_IN, IA3_OUT
from peftplan.methods.targets import PRESETS, peft_target_pattern

if TYPE_CHECKING:
    import optuna
    from peft import PeftConfig

    from peftplan.models.spec import LinearInfo, ModelSpec
    from peftplan.replay.terms import MemoryTerms


class IA3Config(TargetedConfig):
    """IA3 settings: which Linear layers to rescale, and which of them scale their input."""

    feedforward: list[str] | None = Field(
        None,
        description="Targets whose vector scales the input (peft's feedforward_modules: names matched at the end "
        "of a module name, or one 're:<regex>'); unset: the MLP down projections.",
    )

    @field_validator("feedforward", mode="before")
    @classmethod
    def _split_feedforward(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value] if value.startswith(REGEX_PREFIX) else [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("feedforward")
    @classmethod
    def _among_targets(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if any(v.startswith(REGEX_PREFIX) for v in value):
            if len(value) > 1:
                raise ValueError("a 're:' regex must be the only feedforward entry")
            try:
                re.compile(value[0][len(REGEX_PREFIX):])
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        targets = info.data.get("targets") or []
        names_only = not any(t.startswith(REGEX_PREFIX) or t in PRESETS for t in [*targets, *value])
        # peft's own check (IA3Config.__post_init__), made when both are lists of names.
        missing = sorted(set(value) - set(targets)) if names_only else []
        if missing:
            raise ValueError(f"feedforward modules must also be targets (peft's rule): {', '.join(missing)}")
        return value


def is_ffn_output(linear: LinearInfo) -> bool:
    """A feed-forward down projection (IA3 scales its input rather than its output)."""
    return linear.role == "mlp" and linear.in_features > linear.out_features


def feedforward_names(spec: ModelSpec, cfg: IA3Config) -> set[str]:
    """The selected Linears whose IA3 vector scales the input, by peft's rule for `feedforward_modules`."""
    selected = selected_linears(spec, cfg)
    ff = cfg.feedforward
    if ff is None:
        return {lin.name for lin in selected if is_ffn_output(lin)}
    if ff and ff[0].startswith(REGEX_PREFIX):
        pattern = re.compile(ff[0][len(REGEX_PREFIX):])
        return {lin.name for lin in selected if pattern.fullmatch(lin.name)}
    # peft: `key.endswith(name)`, a plain suffix (not only after a dot, unlike target_modules).
    return {lin.name for lin in selected if any(lin.name.endswith(name) for name in ff)}


class IA3(PeftMethod[IA3Config]):
    name = "ia3"
    lr_range = (1e-4, 3e-2, 3e-3)
    summary = "Learned rescaling vectors on activations; tiny, merges into the base."
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul", quantized_base=True)
    peft_fields = PeftFields("IA3", {}, extra=frozenset({"feedforward_modules"}),
                             required=("target_modules", "feedforward_modules"))

    def trainable_params(self, spec: ModelSpec, cfg: IA3Config) -> int:
        feedforward = feedforward_names(spec, cfg)
        return sum(
            lin.in_features if lin.name in feedforward else lin.out_features for lin in selected_linears(spec, cfg)
        )

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        feedforward = raw["feedforward_modules"]
        return self.name, {"targets": targets_from_peft(raw["target_modules"]),
                           "feedforward": [REGEX_PREFIX + feedforward] if isinstance(feedforward, str)
                           else targets_from_peft(feedforward, "feedforward_modules")}

    def memory_terms(self, spec: ModelSpec, cfg: IA3Config) -> MemoryTerms:
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        feedforward = feedforward_names(spec, cfg)
        adapters = {
            lin.name: LinearAdapter(IA3_IN, tensors=((1, lin.in_features),), names=("ia3_l",))
            if lin.name in feedforward
            else LinearAdapter(IA3_OUT, tensors=((lin.out_features, 1),), names=("ia3_l",))
            for lin in selected_linears(spec, cfg)
        }
        total = sum(a.delta_params for a in adapters.values())
        return MemoryTerms(adapter_params=total, linear_adapters=adapters)

    def peft_config(self, spec: ModelSpec, cfg: IA3Config) -> PeftConfig:
        from peft import IA3Config as PeftIA3Config

        selected = selected_linears(spec, cfg)
        names = feedforward_names(spec, cfg)
        feedforward = [lin for lin in selected if lin.name in names]
        return PeftIA3Config(
            target_modules=peft_target_pattern(spec, selected),
            feedforward_modules=peft_target_pattern(spec, feedforward) if feedforward else [],
            task_type=peft_task_type(spec),
        )

    def search_space(self, trial: optuna.Trial) -> IA3Config:
        return IA3Config(targets=[trial.suggest_categorical("targets", ["attn", "mlp", "all-linear"])])


METHOD = IA3()
