"""VeRA: frozen shared random projections, trainable per-layer scaling vectors (Kopiczko et al., 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from peftplan.methods._peft import LowRankConfig, PeftMethod, selected_linears
from peftplan.methods.base import PeftFields, Traits
from peftplan.methods.vera.replay import VERA

if TYPE_CHECKING:
    import optuna

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class VeraConfig(LowRankConfig):
    """VeRA settings; the rank is that of the shared frozen projections."""

    rank: int = Field(256, ge=1, le=8192, description="Rank of the shared random projections.")
    alpha: float = Field(1.0, gt=0, description="Unused by VeRA; kept for a uniform low-rank interface.")


class Vera(PeftMethod[VeraConfig]):
    name = "vera"
    lr_range = (1e-4, 1e-2, 1e-3)
    summary = "Shared frozen random projections with trainable scaling vectors; tiny; merges."
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul")
    peft_fields = PeftFields("VERA", {"rank": "r", "dropout": "vera_dropout"})

    def trainable_params(self, spec: ModelSpec, cfg: VeraConfig) -> int:
        # lambda_b scales each output feature, lambda_d each rank direction.
        return sum(lin.out_features + cfg.rank for lin in selected_linears(spec, cfg))

    def memory_terms(self, spec: ModelSpec, cfg: VeraConfig) -> MemoryTerms:
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        selected = selected_linears(spec, cfg)
        adapters = {
            lin.name: LinearAdapter(VERA, rank=cfg.rank, dropout=cfg.dropout, tensors=((lin.out_features,), (cfg.rank,)),
                                      names=("vera_lambda_b", "vera_lambda_d"))
            for lin in selected
        }
        # One shared pair of frozen random projections, sized for the widest adapted layer.
        widest_in = max(lin.in_features for lin in selected)
        widest_out = max(lin.out_features for lin in selected)
        return MemoryTerms(
            adapter_params=sum(a.delta_params for a in adapters.values()),
            frozen_adapter_params=cfg.rank * (widest_in + widest_out),
            linear_adapters=adapters,
            # peft saves the projections with the adapter (save_projection=True).
            frozen_saved=(("base_model.vera_A", (cfg.rank, widest_in)), ("base_model.vera_B", (widest_out, cfg.rank))),
        )

    def search_space(self, trial: optuna.Trial) -> VeraConfig:
        rank = trial.suggest_categorical("rank", [64, 128, 256, 512])
        targets = trial.suggest_categorical("targets", ["attn", "mlp", "all-linear"])
        return VeraConfig(rank=rank, targets=[targets])


METHOD = Vera()
