"""LoKr: a Kronecker-product update W1 ⊗ W2, W2 low-rank when that is smaller (Yeh et al., 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from peftplan.methods._peft import LowRankConfig, PeftMethod, selected_linears, suggest_low_rank
from peftplan.methods.base import PeftFields, Traits
from peftplan.methods.lokr.factors import factorization
from peftplan.methods.lokr.replay import LOKR

if TYPE_CHECKING:
    import optuna

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class LoKrConfig(LowRankConfig):
    """LoKr settings."""

    rank: int = Field(8, ge=1, le=8192, description="Rank of the decomposed Kronecker factor.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator.")
    decompose_both: bool = Field(False, description="Also decompose the first Kronecker factor.")
    decompose_factor: int = Field(-1, description="Factorization divider; -1 means near the square root.")


def lokr_layer_tensors(in_features: int, out_features: int, cfg: LoKrConfig) -> tuple[tuple[int, int], ...]:
    """Shapes of the trainable tensors LoKr adds to one Linear (w1 or w1_a/w1_b, w2 or w2_a/w2_b)."""
    in_m, in_n = factorization(in_features, cfg.decompose_factor)
    out_l, out_k = factorization(out_features, cfg.decompose_factor)
    r = cfg.rank
    use_w1 = not (cfg.decompose_both and r < max(out_l, in_m) / 2)
    use_w2 = not (r < max(out_k, in_n) / 2)
    w1 = ((out_l, in_m),) if use_w1 else ((out_l, r), (r, in_m))
    w2 = ((out_k, in_n),) if use_w2 else ((out_k, r), (r, in_n))
    return w1 + w2


def lokr_layer_names(in_features: int, out_features: int, cfg: LoKrConfig) -> tuple[str, ...]:
    """peft's names for the tensors of `lokr_layer_tensors`, in the same order."""
    in_m, in_n = factorization(in_features, cfg.decompose_factor)
    out_l, out_k = factorization(out_features, cfg.decompose_factor)
    r = cfg.rank
    use_w1 = not (cfg.decompose_both and r < max(out_l, in_m) / 2)
    use_w2 = not (r < max(out_k, in_n) / 2)
    w1 = ("lokr_w1",) if use_w1 else ("lokr_w1_a", "lokr_w1_b")
    w2 = ("lokr_w2",) if use_w2 else ("lokr_w2_a", "lokr_w2_b")
    return w1 + w2


def lokr_layer_params(in_features: int, out_features: int, cfg: LoKrConfig) -> int:
    return sum(a * b for a, b in lokr_layer_tensors(in_features, out_features, cfg))


class LoKr(PeftMethod[LoKrConfig]):
    name = "lokr"
    summary = "Kronecker product of a small full matrix and a low-rank one; very few parameters; merges."
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul", conv1d=False)
    peft_fields = PeftFields("LOKR", {"rank": "r", "alpha": "alpha", "dropout": "module_dropout",
                                      "decompose_both": "decompose_both", "decompose_factor": "decompose_factor"})

    def trainable_params(self, spec: ModelSpec, cfg: LoKrConfig) -> int:
        return sum(lokr_layer_params(lin.in_features, lin.out_features, cfg) for lin in selected_linears(spec, cfg))

    def memory_terms(self, spec: ModelSpec, cfg: LoKrConfig) -> MemoryTerms:
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        adapters = {
            lin.name: LinearAdapter(
                LOKR,
                rank=cfg.rank,
                dropout=cfg.dropout,
                tensors=lokr_layer_tensors(lin.in_features, lin.out_features, cfg),
                names=lokr_layer_names(lin.in_features, lin.out_features, cfg),
            )
            for lin in selected_linears(spec, cfg)
        }
        return MemoryTerms(adapter_params=sum(a.delta_params for a in adapters.values()), linear_adapters=adapters)

    def search_space(self, trial: optuna.Trial) -> LoKrConfig:
        return suggest_low_rank(trial, LoKrConfig)


METHOD = LoKr()
