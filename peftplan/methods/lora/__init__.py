"""LoRA: a trainable low-rank update B·A beside each targeted Linear (Hu et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from peftplan.errors import UnsupportedError
from peftplan.methods._peft import (
    PeftMethod,
    QuantizableConfig,
    TargetedConfig,
    peft_alpha,
    selected_targets,
    suggest_low_rank,
)
from peftplan.methods.base import PeftFields, Traits

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from peftplan.methods.targets import Selection
    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import AdapterKind, MemoryTerms


class LoraConfig(QuantizableConfig):
    """LoRA settings; the defaults are the literature recipe (r=16, alpha=32, all linear layers)."""


class Lora(PeftMethod[LoraConfig]):
    name = "lora"
    summary = "Low-rank update B·A on each targeted Linear; merges into the base."
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul", quantized_base=True)
    peft_fields = PeftFields("LORA", {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout"},
                             extra=frozenset({"target_parameters", "use_dora", "use_rslora"}))
    use_dora: ClassVar[bool] = False
    use_rslora: ClassVar[bool] = False

    def selection(self, spec: ModelSpec, cfg: TargetedConfig) -> Selection:
        """Linears and, on MoE models, fused experts and routers (peft's `target_parameters`; not for DoRA)."""
        return selected_targets(spec, cfg, parameters=not self.use_dora)

    def check(self, spec: ModelSpec, cfg: LoraConfig) -> None:
        super().check(spec, cfg)
        if self.selection(spec, cfg).params and cfg.dropout > 0:
            raise UnsupportedError(
                f"peft's LoRA on expert parameters (target_parameters) cannot use dropout ({cfg.dropout:g}): "
                "pass --dropout 0, or target Linear layers only (--targets attn)"
            )

    def trainable_params(self, spec: ModelSpec, cfg: LoraConfig) -> int:
        selection = self.selection(spec, cfg)
        per_layer = [cfg.rank * (lin.in_features + lin.out_features) for lin in selection.linears]
        # DoRA adds a learned magnitude per output feature.
        magnitudes = [lin.out_features for lin in selection.linears] if self.use_dora else []
        return sum(per_layer) + sum(magnitudes) + sum(p.trainable(cfg.rank) for p in selection.params)

    def memory_terms(self, spec: ModelSpec, cfg: LoraConfig) -> MemoryTerms:
        from peftplan.methods.lora.experts import LORA_PARAM
        from peftplan.replay.terms import LinearAdapter, MemoryTerms, ParamAdapter

        selection = self.selection(spec, cfg)
        kind: AdapterKind = self.adapter_kind()
        by_shape: dict[tuple[int, int], LinearAdapter] = {}  # one (frozen) adapter per shape, shared
        for lin in selection.linears:
            if (lin.in_features, lin.out_features) not in by_shape:
                by_shape[lin.in_features, lin.out_features] = LinearAdapter(
                    kind,
                    rank=cfg.rank,
                    dropout=cfg.dropout,
                    tensors=((cfg.rank, lin.in_features), (lin.out_features, cfg.rank))
                    + (((lin.out_features,),) if self.use_dora else ()),
                    names=("lora_A.weight", "lora_B.weight") + (("lora_magnitude_vector",) if self.use_dora else ()),
                )
        adapters = {lin.name: by_shape[lin.in_features, lin.out_features] for lin in selection.linears}
        params = {}
        for target in selection.params:
            rank = cfg.rank * target.rank_factor
            d_in, d_out = target.in_out
            params[target.param.name] = ParamAdapter(
                LORA_PARAM, param=target.param.name, shape=target.param.shape, rank=rank, experts=target.experts,
                in_features=d_in, out_features=d_out,
                tensors=((rank * target.experts, d_in), (d_out, rank * target.experts)),
                names=("lora_A.weight", "lora_B.weight"),
            )
        total = sum(a.delta_params for a in adapters.values()) + sum(a.delta_params for a in params.values())
        notes: tuple[str, ...] = ()
        if selection.rewritten:
            leaves = sorted({name.rsplit(".", 1)[-1] for name in selection.rewritten})
            notes = (f"peft rewrites {', '.join(leaves)} on {spec.model_type} to the fused experts, so "
                     f"{len(selection.rewritten)} Linear layers of that name (dense MLPs, shared experts) keep no "
                     "adapter",)
        return MemoryTerms(adapter_params=total, quant=cfg.quant, linear_adapters=adapters, param_adapters=params,
                           notes=notes)

    def adapter_kind(self) -> AdapterKind:
        if self.use_dora:
            from peftplan.methods.dora.replay import DORA

            return DORA
        from peftplan.methods.lora.replay import LORA

        return LORA

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        name = "dora" if raw.get("use_dora") else "rslora" if raw.get("use_rslora") else "lora"
        values = super().from_peft(raw)[1]
        parameters = [str(p) for p in raw.get("target_parameters") or []]
        if parameters and values["targets"] and values["targets"][0].startswith("re:"):
            raise UnsupportedError("adapter_config.json: a regex target_modules with target_parameters is not "
                                   "planned; list the module names")
        return name, values | {"targets": values["targets"] + parameters}

    def peft_values(self, spec: ModelSpec, cfg: LoraConfig) -> dict[str, Any]:
        from peftplan.methods.moe_targets import RANK_PATTERN_KEY, peft_target_parameters

        selection = self.selection(spec, cfg)
        extra: dict[str, Any] = {}
        if selection.params:
            extra["target_parameters"] = peft_target_parameters(spec, selection.params)
        if selection.doubled:  # what peft's own rewrite sets for the fused gate_up (alpha/r unchanged)
            extra["rank_pattern"] = {RANK_PATTERN_KEY: 2 * cfg.rank}
            extra["alpha_pattern"] = {RANK_PATTERN_KEY: peft_alpha(2 * cfg.alpha)}
        return super().peft_values(spec, cfg) | {"use_dora": self.use_dora, "use_rslora": self.use_rslora,
                                                  "bias": "none", **extra}

    def peft_target_modules(self, spec: ModelSpec, cfg: TargetedConfig) -> str | list[str]:
        from peftplan.methods.moe_targets import rewrite_pattern
        from peftplan.methods.targets import peft_target_pattern

        linears = self.selection(spec, cfg).linears
        # peft rewrites a regex on these model types to leaf names; full names keep exactly the selection.
        if rewrite_pattern(spec) is not None or not linears:
            return sorted(lin.name for lin in linears)
        return peft_target_pattern(spec, linears)

    def merge(self, model: nn.Module) -> nn.Module:
        from peftplan.methods.quantize import has_quantized_linears, merge_into_dequantized

        if has_quantized_linears(model):
            return merge_into_dequantized(model)
        return super().merge(model)

    def search_space(self, trial: optuna.Trial) -> LoraConfig:
        return suggest_low_rank(trial, cast("type[LoraConfig]", self.config_cls))  # QLoRA: its own


METHOD = Lora()
