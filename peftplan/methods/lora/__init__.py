"""LoRA: a trainable low-rank update B·A beside each targeted Linear (Hu et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from peftplan.methods._peft import (
    PeftMethod,
    QuantizableConfig,
    peft_alpha,
    peft_targets,
    selected_linears,
    suggest_low_rank,
    targets_from_peft,
)
from peftplan.methods._peft import task_type as peft_task_type

if TYPE_CHECKING:
    import optuna
    from peft import PeftConfig
    from torch import nn

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import AdapterKind, MemoryTerms


class LoraConfig(QuantizableConfig):
    """LoRA settings; the defaults are the literature recipe (r=16, alpha=32, all linear layers)."""


class Lora(PeftMethod[LoraConfig]):
    name = "lora"
    summary = "Low-rank update B·A on each targeted Linear; merges into the base."
    config_cls: ClassVar[type[LoraConfig]] = LoraConfig
    mergeable = True
    inference_overhead = "unmerged-matmul"
    supports_quantized_base = True
    use_dora: ClassVar[bool] = False
    use_rslora: ClassVar[bool] = False
    peft_type = "LORA"
    peft_fields = frozenset({"r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora"})
    peft_required = ("target_modules",)

    def trainable_params(self, spec: ModelSpec, cfg: LoraConfig) -> int:
        per_layer = [cfg.rank * (lin.in_features + lin.out_features) for lin in selected_linears(spec, cfg)]
        # DoRA adds a learned magnitude per output feature.
        magnitudes = [lin.out_features for lin in selected_linears(spec, cfg)] if self.use_dora else []
        return sum(per_layer) + sum(magnitudes)

    def memory_terms(self, spec: ModelSpec, cfg: LoraConfig) -> MemoryTerms:
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        kind: AdapterKind = self.adapter_kind()
        adapters = {
            lin.name: LinearAdapter(
                kind,
                rank=cfg.rank,
                dropout=cfg.dropout,
                tensors=((cfg.rank, lin.in_features), (lin.out_features, cfg.rank))
                + (((lin.out_features,),) if self.use_dora else ()),
                names=("lora_A.weight", "lora_B.weight") + (("lora_magnitude_vector",) if self.use_dora else ()),
            )
            for lin in selected_linears(spec, cfg)
        }
        total = sum(a.delta_params for a in adapters.values())
        return MemoryTerms(adapter_params=total, quant=cfg.quant, linear_adapters=adapters)

    def adapter_kind(self) -> AdapterKind:
        if self.use_dora:
            from peftplan.methods.dora.replay import DORA

            return DORA
        from peftplan.methods.lora.replay import LORA

        return LORA

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        name = "dora" if raw.get("use_dora") else "rslora" if raw.get("use_rslora") else "lora"
        return name, {"rank": raw.get("r", 8), "alpha": raw.get("lora_alpha", 8), "dropout": raw.get("lora_dropout", 0.0),
                      "targets": targets_from_peft(raw["target_modules"])}

    def peft_config(self, spec: ModelSpec, cfg: LoraConfig) -> PeftConfig:
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=peft_alpha(cfg.alpha),
            lora_dropout=cfg.dropout,
            target_modules=peft_targets(spec, cfg),
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            bias="none",
            task_type=peft_task_type(spec),
        )

    def merge(self, model: nn.Module) -> nn.Module:
        from peftplan.methods.quantize import has_quantized_linears, merge_into_dequantized

        if has_quantized_linears(model):
            return merge_into_dequantized(model)
        return super().merge(model)

    def search_space(self, trial: optuna.Trial) -> LoraConfig:
        return suggest_low_rank(trial, self.config_cls)


METHOD = Lora()
