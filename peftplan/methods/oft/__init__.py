"""OFT: a learned block-diagonal rotation of each targeted Linear's input (Qiu et al., 2023; OFTv2:
Qiu et al., 2025), as peft 0.21's `OFTConfig` builds it.

Each adapted Linear stores, per rotation block, the upper triangle of a skew-symmetric matrix
(`oft_R.weight`, shape (blocks, b·(b-1)/2), or (1, ...) with `block_share`); the rotation is rebuilt
from it by the Cayley transform (or its truncated Neumann series) every forward. Exactly one of
`block_size` (peft's `oft_block_size`) and `blocks` (peft's `r`) is set; the other follows from each
layer's `in_features`. Where it does not divide `in_features`, peft 0.21 does not refuse: it moves the
value to the nearest divisor (with a warning) and builds that, so the count does the same.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator

from peftplan.errors import BadInputError, UnsupportedError
from peftplan.methods._peft import PeftMethod, TargetedConfig, selected_linears
from peftplan.methods.base import PeftFields, Traits

if TYPE_CHECKING:
    import optuna

    from peftplan.models.spec import LinearInfo, ModelSpec
    from peftplan.replay.terms import MemoryTerms

_log = logging.getLogger(__name__)
INDEX_BYTES = 8  # int64
_warned: set[str] = set()


class OftConfig(TargetedConfig):
    """OFT settings; the defaults are peft 0.21's (OFTv2: block size 32, Cayley-Neumann with 5 terms)."""

    block_size: int = Field(32, ge=0, description="Side of each rotation block (peft oft_block_size); 0: from blocks.")
    blocks: int = Field(0, ge=0, validate_default=True,
                        description="Rotation blocks per layer (peft r); 0: from block_size.")
    block_share: bool = Field(False, description="One rotation block shared by all blocks of a layer.")
    coft: bool = Field(False, description="Constrained OFT: project the rotation back within eps every forward.")
    eps: float = Field(6e-5, gt=0, description="COFT's radius (only with coft).")
    use_cayley_neumann: bool = Field(True, description="Truncated Neumann series instead of the exact Cayley solve.")
    num_cayley_neumann_terms: int = Field(
        5, ge=2, description="Terms of the Neumann series (with 1, R = I: the rotation could not train)."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="peft's module_dropout (inert in peft 0.21's Linear).")

    @field_validator("blocks")
    @classmethod
    def _one_of_size_and_blocks(cls, blocks: int, info: ValidationInfo) -> int:
        size = info.data.get("block_size")
        if size is not None and (size == 0) == (blocks == 0):
            raise ValueError(f"set exactly one of block_size ({size}) and blocks ({blocks}): their product is "
                             "each layer's in_features")
        return blocks


def _nearest_divisor(in_features: int, value: int) -> int:
    """peft 0.21's `OFTLayer.adjust_oft_parameters`: the divisor of `in_features` nearest `value`
    (the lower one on a tie), or `in_features` itself when `value` exceeds it."""
    if value >= in_features:
        return in_features
    higher = value
    while higher <= in_features and in_features % higher != 0:
        higher += 1
    lower = value
    while lower > 1 and in_features % lower != 0:
        lower -= 1
    return lower if value - lower <= higher - value else higher


def layer_blocks(in_features: int, cfg: OftConfig) -> tuple[int, int]:
    """(blocks, block size) peft builds on a layer with `in_features` inputs (`OFTLayer.update_layer`)."""
    if cfg.blocks == 0:
        size = cfg.block_size
        if in_features % size != 0 or size > in_features:
            size = _nearest_divisor(in_features, size)
        return in_features // size, size
    blocks = cfg.blocks
    if in_features % blocks != 0 or blocks > in_features:
        blocks = _nearest_divisor(in_features, blocks)
    return blocks, in_features // blocks


def layer_shape(in_features: int, cfg: OftConfig) -> tuple[int, int]:
    """Shape of `oft_R.weight` on one layer: (blocks stored, upper-triangle entries of one block)."""
    blocks, size = layer_blocks(in_features, cfg)
    return (1 if cfg.block_share else blocks), size * (size - 1) // 2


class Oft(PeftMethod[OftConfig]):
    name = "oft"
    summary = "Learned block-diagonal rotation of each Linear's input (Cayley); preserves angles; merges."
    # conv1d: peft 0.21 raises "Target module Conv1D() is not supported" (TypeError).
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul", conv1d=False)
    # peft's MetaMathQA method comparison trains OFT at its default 1e-4 (AdamW, cosine; the
    # oft/llama-3.2-3B-rank32 experiment overrides no training parameter).
    lr_range = (1e-5, 1e-3, 1e-4)
    peft_fields = PeftFields("OFT", {"block_size": "oft_block_size", "blocks": "r", "dropout": "module_dropout",
                                     **{same: same for same in ("coft", "eps", "block_share", "use_cayley_neumann",
                                                                "num_cayley_neumann_terms")}})

    def check(self, spec: ModelSpec, cfg: OftConfig) -> None:
        super().check(spec, cfg)
        if self.trainable_params(spec, cfg) == 0:
            raise UnsupportedError("oft with 1x1 rotation blocks trains nothing (block_size 1, or as many blocks as "
                                   "input features); use a larger block_size")
        moved = sorted({(lin.in_features, layer_blocks(lin.in_features, cfg)) for lin in selected_linears(spec, cfg)
                        if not _as_asked(lin, cfg)})
        if moved:
            asked = f"block_size {cfg.block_size}" if cfg.blocks == 0 else f"blocks {cfg.blocks}"
            built = ", ".join(f"{blocks} x {size} on in_features {n}" for n, (blocks, size) in moved)
            message = (f"peftplan: warning: oft {asked} does not divide every targeted in_features; peft adjusts "
                       f"it and so does the plan: {built}")
            if message not in _warned:  # once per process: a plan checks its methods more than once
                _warned.add(message)
                _log.warning(message)

    def trainable_params(self, spec: ModelSpec, cfg: OftConfig) -> int:
        total = 0
        for lin in selected_linears(spec, cfg):
            stored, entries = layer_shape(lin.in_features, cfg)
            total += stored * entries
        return total

    def memory_terms(self, spec: ModelSpec, cfg: OftConfig) -> MemoryTerms:
        from peftplan.methods.oft.replay import oft_kind
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        kind = oft_kind(cfg.num_cayley_neumann_terms if cfg.use_cayley_neumann else 0)
        adapters = {
            lin.name: LinearAdapter(
                kind,
                rank=layer_blocks(lin.in_features, cfg)[0],
                tensors=(layer_shape(lin.in_features, cfg),),
                names=("oft_R.weight",),
            )
            for lin in selected_linears(spec, cfg)
        }
        # Each rotation module registers the triangle's row and column indices (`torch.triu_indices`, int64).
        indices = sum(2 * a.tensors[0][1] * INDEX_BYTES for a in adapters.values())
        return MemoryTerms(adapter_params=sum(a.delta_params for a in adapters.values()), linear_adapters=adapters,
                           buffer_bytes=indices)

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "oft_block_size" not in raw:
            # peft 0.21's OFTConfig.check_kwargs refuses these files too.
            raise BadInputError("adapter_config.json: an OFT adapter without oft_block_size was written by peft < "
                                "0.14, whose OFT peft 0.21 cannot load; retrain it with a newer peft")
        return super().from_peft(raw)


    def search_space(self, trial: optuna.Trial) -> OftConfig:
        block_size = trial.suggest_categorical("block_size", [16, 32, 64])
        targets = trial.suggest_categorical("targets", ["attn", "mlp", "all-linear"])
        return OftConfig(block_size=block_size, targets=[targets])


def _as_asked(lin: LinearInfo, cfg: OftConfig) -> bool:
    blocks, size = layer_blocks(lin.in_features, cfg)
    return size == cfg.block_size if cfg.blocks == 0 else blocks == cfg.blocks


METHOD = Oft()
