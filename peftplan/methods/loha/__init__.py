"""LoHa: a low-rank Hadamard-product update, (A1·B1) ⊙ (A2·B2) (Hyeon-Woo et al., 2022)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from peftplan.methods._peft import LowRankConfig, PeftMethod, selected_linears, suggest_low_rank
from peftplan.methods.base import PeftFields, Traits
from peftplan.methods.loha.replay import LOHA

if TYPE_CHECKING:
    import optuna

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class LoHaConfig(LowRankConfig):
    """LoHa settings (rank of each Hadamard factor)."""

    rank: int = Field(8, ge=1, le=8192, description="Rank of each of the two factors.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator.")


class LoHa(PeftMethod[LoHaConfig]):
    name = "loha"
    summary = "Hadamard product of two low-rank updates: higher effective rank per parameter; merges."
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul", conv1d=False)
    peft_fields = PeftFields("LOHA", {"rank": "r", "alpha": "alpha", "dropout": "module_dropout"})

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

    def search_space(self, trial: optuna.Trial) -> LoHaConfig:
        return suggest_low_rank(trial, LoHaConfig)


METHOD = LoHa()
