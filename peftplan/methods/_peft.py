"""Shared plumbing for methods that peft implements: configs with targets, apply, save, load, merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from pydantic import Field, field_validator

from peftplan.errors import BadInputError, UnsupportedError
from peftplan.methods.base import ConfigT, Method, MethodConfig, PeftFields, Quant
from peftplan.methods.targets import Selection, parse_targets, select_linears, select_targets

if TYPE_CHECKING:
    import optuna
    from peft import PeftConfig
    from torch import nn

    from peftplan.models.spec import LinearInfo, ModelSpec

REGEX_PREFIX = "re:"


class TargetedConfig(MethodConfig):
    """A config with `targets`: names, presets (attn, mlp, all-linear) or one `re:<regex>` (peft semantics)."""

    targets: list[str] = Field(default_factory=lambda: ["all-linear"], description="Modules to adapt.")

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> list[str]:
        if isinstance(value, str) and value.startswith(REGEX_PREFIX):
            return [value]
        names = parse_targets(value)
        if any(n.startswith(REGEX_PREFIX) for n in names) and len(names) > 1:
            raise ValueError("a 're:' regex target must be the only target")
        return names


class LowRankConfig(TargetedConfig):
    """Rank, alpha and dropout: the knobs the LoRA family shares."""

    rank: int = Field(16, ge=1, le=8192, description="Adapter rank r.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")


LowRankT = TypeVar("LowRankT", bound=LowRankConfig)


class QuantizableConfig(LowRankConfig):
    """A low-rank config that may sit on a bitsandbytes-quantized base."""

    quant: Quant = Field("none", description="Base weight quantization: none, nf4, fp4 or int8.")


def targets_from_peft(raw: Any, field: str = "target_modules") -> list[str]:
    """A peft config's target field as peftplan targets: names, "all-linear" or one "re:<regex>"."""
    if isinstance(raw, str):
        return ["all-linear"] if raw.lower() == "all-linear" else [REGEX_PREFIX + raw]
    if isinstance(raw, list | tuple):
        return [str(t) for t in raw]
    raise BadInputError(f"adapter_config.json: {field} must be a list of module names or a regex, got {raw!r}")


def peft_alpha(alpha: float) -> int:
    """`alpha` as peft's configs take it: they annotate it as an int but use it as a number
    (scaling = alpha / r), so a fractional alpha is passed unchanged."""
    return cast(int, alpha)


def selected_linears(spec: ModelSpec, cfg: TargetedConfig) -> list[LinearInfo]:
    """The Linear layers `cfg.targets` selects on `spec`."""
    if cfg.targets[0].startswith(REGEX_PREFIX):
        return select_linears(spec, [], regex=cfg.targets[0][len(REGEX_PREFIX) :])
    return select_linears(spec, cfg.targets)


def selected_targets(spec: ModelSpec, cfg: TargetedConfig, *, parameters: bool = True) -> Selection:
    """The Linears and parameters (fused MoE experts, routers) `cfg.targets` selects, as peft's LoRA adapts them."""
    if cfg.targets[0].startswith(REGEX_PREFIX):
        return select_targets(spec, [], regex=cfg.targets[0][len(REGEX_PREFIX) :], parameters=parameters)
    return select_targets(spec, cfg.targets, parameters=parameters)


def task_type(spec: ModelSpec) -> str | None:
    """peft's task type: causal LM for decoders and VLMs; feature extraction for encoders."""
    return "CAUSAL_LM" if spec.kind in ("decoder", "vlm") else "FEATURE_EXTRACTION"


def is_on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def peft_defaults(peft_type: str) -> dict[str, Any]:
    """The JSON form of each field of peft's config class for `peft_type`, at its declared default.

    Read from the dataclass rather than by building the config, which peft refuses for some types at
    their defaults (AdaLoRA without `total_step`); the two differ only in `peft_type` and `peft_version`.
    """
    import dataclasses

    values: dict[str, Any] = {}
    for f in dataclasses.fields(peft_config_class(peft_type)):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        values[f.name] = json.loads(json.dumps(None if default is dataclasses.MISSING else default, default=str))
    return values


def peft_config_class(peft_type: str) -> type[PeftConfig]:
    """peft's config class for `peft_type` ("LORA", "LOHA", ...)."""
    import logging

    # bitsandbytes (imported by peft) logs a harmless note about an optional CPU kernel package.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    mapping = cast("dict[str, type[PeftConfig]]", PEFT_TYPE_TO_CONFIG_MAPPING)  # keyed by PeftType, a str enum
    return mapping[peft_type]


class PeftMethod(Method[ConfigT]):
    """A method built by `peft.get_peft_model` from the peft config its `peft_fields` map its settings to."""

    peft_fields: ClassVar[PeftFields]
    reload_trainable: bool = True  # peft reloads prompt-learning adapters for inference only

    def peft_config(self, spec: ModelSpec, cfg: ConfigT) -> PeftConfig:
        """The peft config that builds exactly what `trainable_params` counts."""
        return peft_config_class(self.peft_fields.peft_type)(**self.peft_values(spec, cfg))

    def peft_values(self, spec: ModelSpec, cfg: ConfigT) -> dict[str, Any]:
        """The peft config's fields: each mapped setting, the targets and the task type."""
        fields = self.peft_fields
        values = {peft: getattr(cfg, ours) for ours, peft in fields.names.items()}
        if fields.targets and isinstance(cfg, TargetedConfig):
            values[fields.targets] = self.peft_target_modules(spec, cfg)
        return values | {"task_type": task_type(spec)}

    def peft_target_modules(self, spec: ModelSpec, cfg: TargetedConfig) -> str | list[str]:
        """peft's `target_modules` that selects exactly what this method adapts."""
        return peft_targets(spec, cfg)

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Each mapped setting from `raw`, or peft's default where the file leaves it out, and the targets."""
        fields = self.peft_fields
        defaults = peft_defaults(fields.peft_type)
        values = {ours: raw.get(peft, defaults[peft]) for ours, peft in fields.names.items()}
        if fields.targets:
            values["targets"] = targets_from_peft(raw[fields.targets], fields.targets)
        return self.name, values

    def selection(self, spec: ModelSpec, cfg: TargetedConfig) -> Selection:
        """What `cfg.targets` adapts with this method (Linears only, unless the method adapts parameters)."""
        return Selection(tuple(selected_linears(spec, cfg)))

    def check(self, spec: ModelSpec, cfg: ConfigT) -> None:
        if not isinstance(cfg, TargetedConfig):
            return
        selected = self.selection(spec, cfg).linears  # raises on unknown targets
        conv1d = sorted({lin.leaf for lin in selected if lin.conv1d})
        if conv1d and not self.traits.conv1d:
            raise UnsupportedError(
                f"peft's {self.name} cannot adapt GPT-2 style Conv1D layers ({', '.join(conv1d)}); use lora or ia3"
            )

    def prepare_base(self, model: nn.Module, cfg: ConfigT) -> None:
        """Hook run on the base before peft wraps it (quantization for QLoRA and friends)."""
        quant = getattr(cfg, "quant", "none")
        if quant != "none" and not is_on_meta(model):
            # bitsandbytes cannot quantize meta tensors; on meta the trainable count is unaffected.
            from peftplan.methods.quantize import prepare_quantized_base

            prepare_quantized_base(model, quant)

    def apply(self, model: nn.Module, cfg: ConfigT) -> nn.Module:
        from peft import get_peft_model

        from peftplan.models.spec import ModelSpec

        spec = ModelSpec.from_model(model)
        self.check(spec, cfg)
        self.prepare_base(model, cfg)
        try:
            return get_peft_model(model, self.peft_config(spec, cfg))
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise BadInputError(f"peft cannot apply {self.name} to {spec.architecture}: {exc}") from None

    def merge(self, model: nn.Module) -> nn.Module:
        if not self.traits.mergeable:
            return super().merge(model)
        return model.merge_and_unload()  # type: ignore[operator]

    def _save_weights(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(str(directory), safe_serialization=True)  # type: ignore[operator]

    def load(self, base: nn.Module, directory: Path, cfg: ConfigT) -> nn.Module:
        from peft import PeftModel

        self.prepare_base(base, cfg)
        return PeftModel.from_pretrained(base, str(directory), is_trainable=self.reload_trainable)


def peft_targets(spec: ModelSpec, cfg: TargetedConfig) -> str | list[str]:
    """`target_modules` for peft that selects exactly `selected_linears(spec, cfg)`."""
    from peftplan.methods.targets import peft_target_pattern

    return peft_target_pattern(spec, selected_linears(spec, cfg))


def suggest_low_rank(trial: optuna.Trial, config_cls: type[LowRankT], **fixed: Any) -> LowRankT:
    """The LoRA-family search space: rank, alpha as 1x or 2x rank, target preset and dropout."""
    rank = trial.suggest_categorical("rank", [4, 8, 16, 32, 64])
    ratio = trial.suggest_categorical("alpha_ratio", [1, 2])
    targets = trial.suggest_categorical("targets", ["attn", "mlp", "all-linear"])
    dropout = trial.suggest_categorical("dropout", [0.0, 0.05])
    return config_cls(rank=rank, alpha=float(rank * ratio), targets=[targets], dropout=dropout, **fixed)
