"""LoHa: a low-rank Hadamard-product update, (A1·B1) ⊙ (A2·B2) (Hyeon-Woo et al., 2022)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from peftplan.methods._peft import (
    LowRankConfig,
    PeftMethod,
    peft_alpha,
    peft_targets,
    selected_linears,
    suggest_low_rank,
    targets_from_peft,
)
from peftplan.methods._peft import task_type as peft_task_type
from peftplan.methods.loha.replay import LOHA

if TYPE_CHECKING:
    import optuna
    from peft import PeftConfig

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class LoHaConfig(LowRankConfig):
    """LoHa settings (rank of each Hadamard factor)."""

    rank: int = Field(8, ge=1, le=8192, description="Rank of each of the two factors.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator.")


class LoHa(PeftMethod[LoHaConfig]):
    supports_conv1d = False
    name = "loha"
    summary = "Hadamard product of two low-rank updates: higher effective rank per parameter; merges."
    config_cls: ClassVar[type[LoHaConfig]] = LoHaConfig
    mergeable = True
    inference_overhead = "unmerged-matmul"
    peft_type = "LOHA"
    peft_fields = frozenset({"r", "alpha", "module_dropout", "target_modules"})
    peft_required = ("target_modules",)

    def trainable_params(self, spec: ModelSpec, cfg: LoHaConfig) -> int:
        return sum(2 * cfg.rank * (lin.in_features + lin.out_features) for lin in selected_linears(spec, cfg))

    def memory_terms(self, spec: ModelSpec, cfg: LoHaConfig) -> MemoryTerms:
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        adapters = {
            lin.name: LinearAdapter(
                LOHA,
                rank=cfg.rank,
                dropout=cfg.dropout,
                tensors=((lin.out_features, cfg.rank), (cfg.rank, lin.in_features)) * 2,
                names=("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
            )
            for lin in selected_linears(spec, cfg)
        }
        return MemoryTerms(adapter_params=sum(a.delta_params for a in adapters.values()), linear_adapters=adapters)

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.name, {"rank": raw.get("r", 8), "alpha": raw.get("alpha", 8),
                           "dropout": raw.get("module_dropout", 0.0), "targets": targets_from_peft(raw["target_modules"])}

    def peft_config(self, spec: ModelSpec, cfg: LoHaConfig) -> PeftConfig:
        from peft import LoHaConfig as PeftLoHaConfig

        return PeftLoHaConfig(
            r=cfg.rank,
            alpha=peft_alpha(cfg.alpha),
            module_dropout=cfg.dropout,
            target_modules=peft_targets(spec, cfg),
            task_type=peft_task_type(spec),
        )

    def search_space(self, trial: optuna.Trial) -> LoHaConfig:
        return suggest_low_rank(trial, self.config_cls)


METHOD = LoHa()
