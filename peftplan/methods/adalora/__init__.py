"""AdaLoRA: LoRA in SVD form, P·Λ·Q, whose ranks a shrinking budget prunes during training (Zhang et al., 2023).

peft's `AdaLoraConfig` builds, beside each targeted Linear, lora_A [init_r, in] (Q), lora_E [init_r, 1]
(the singular values Λ) and lora_B [out, init_r] (P), all trainable, and `ranknum`, a one-element fp32
parameter (the rank the scaling divides by; never saved). peft means it frozen and leaves it so on an fp32
base on the CPU, but moving the adapter to a GPU or casting it to a 16-bit base re-wraps it as a trainable
parameter (peft 0.21's `_move_adapter_to_device_of_base_layer`): it would then train, and be lost on
reload. `apply` and `load` freeze it again, so the count is init_r·(in + out + 1) per Linear everywhere.
Pruning zeroes entries of lora_E in place: the tensors keep their init_r shape all through training, so
memory and the trainable count are init_r's.

Training needs two things LoRA does not:
- `model.base_model.update_and_allocate(step)` after each optimizer step (before the gradients are
  released): `after_optimizer_step`. Its `RankAllocator` keeps, for every adapter tensor, three copies of
  its size (the sensitivity `ipt`, its moving average `exp_avg_ipt` and the uncertainty `exp_avg_unc`),
  from the first call until the final budget is fixed (step `total_step - tfinal`): `method_state`.
- `total_step`, the run's length, for the budget schedule. peft refuses a config without it. The harness
  sets it to the trial's optimizer steps (`for_steps`) unless the config gives it; plans, traces and an
  emitted peft config use `PLANNING_TOTAL_STEP` (memory does not depend on it).

`AdaLoraModel.forward` adds `orth_reg_weight * mean ||P^T P - I||` over every lora_A and lora_B to the loss
the model computes from its labels (whatever the weight, even 0). Autograd runs that term's backward
first, so the lora_A and lora_B gradients exist through the model's whole backward (`loss_terms`). Under
autocast the term's matmuls keep 16-bit copies of each tensor and its transpose until then (as many bytes
as those gradients); they are freed before the model's backward, and made after the loss has freed its
fp32 copy of the logits, which outweighs them while lora_A and lora_B hold fewer values than vocabulary x
tokens (what the planner's forward-end moment already counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from peftplan.methods._peft import PeftMethod, TargetedConfig, selected_linears
from peftplan.methods.base import PeftFields, Quant, Traits

if TYPE_CHECKING:
    from pathlib import Path

    import optuna
    from torch import nn

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms

PLANNING_TOTAL_STEP = 1000  # total_step when no run gives one (peft's docstring example)
ALLOCATOR_COPIES = 3  # RankAllocator: ipt, exp_avg_ipt, exp_avg_unc per adapter tensor
SUFFIXES = ("lora_A", "lora_E", "lora_B")  # keys in peft's adapter file (the adapter name removed)


class AdaLoraConfig(TargetedConfig):
    """AdaLoRA settings; the defaults are peft's example (init_r 12 shrinking to 8, alpha 32, all linear layers)."""

    init_r: int = Field(12, ge=1, le=8192, description="Rank every targeted layer starts at (peft's init_r).")
    target_r: int = Field(8, ge=1, le=8192, description="Average rank the budget shrinks to (peft's target_r).")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator (lora_alpha); peft divides by init_r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    tinit: int = Field(0, ge=0, description="Steps of warm-up before ranks are pruned.")
    tfinal: int = Field(0, ge=0, description="Final steps at the target budget.")
    delta_t: int = Field(1, ge=1, description="Steps between two budget allocations (peft's deltaT).")
    beta1: float = Field(0.85, gt=0.0, lt=1.0, description="EMA coefficient of the sensitivity.")
    beta2: float = Field(0.85, gt=0.0, lt=1.0, description="EMA coefficient of the uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0.0, description="Weight of the orthogonal regularisation.")
    total_step: int | None = Field(
        None, ge=1, description=f"Optimizer steps of the run; unset: the trial's steps in a bench, "
        f"{PLANNING_TOTAL_STEP} in a plan, trace or emitted peft config (memory does not depend on it).")
    quant: Quant = Field("none", description="Base weight quantization: none, nf4, fp4 or int8.")

    @model_validator(mode="after")
    def _schedule(self) -> AdaLoraConfig:
        # The allocator masks init_bgt - budget ranks (torch.kthvalue needs at least one), so the target is smaller.
        if self.target_r >= self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must be below init_r ({self.init_r})")
        if self.total_step is not None and self.tinit >= self.total_step - self.tfinal:
            raise ValueError(f"tinit + tfinal ({self.tinit} + {self.tfinal}) leave no budgeting phase in "
                             f"total_step {self.total_step} (peft's rule)")
        return self

    def planned_total_step(self) -> int:
        """`total_step`, or a schedule long enough for tinit and tfinal when no run gives one."""
        return self.total_step or max(PLANNING_TOTAL_STEP, self.tinit + self.tfinal + 1)


class AdaLora(PeftMethod[AdaLoraConfig]):
    name = "adalora"
    summary = "LoRA in SVD form whose ranks a budget prunes while training; init_r's memory; merges."
    traits = Traits(mergeable=True, inference_overhead="unmerged-matmul", quantized_base=True)
    # The paper's GLUE and summarisation runs use 5e-4 to 1.2e-3 (Zhang et al., 2023, appendix).
    lr_range = (5e-5, 5e-3, 5e-4)
    # `r` is ignored by peft's AdaLoRA (it warns); `rank_pattern` shrinks only a loaded adapter: peft builds
    # every layer at init_r whatever it says, so a run from this file trains init_r's tensors.
    peft_fields = PeftFields("ADALORA", {"alpha": "lora_alpha", "dropout": "lora_dropout", "delta_t": "deltaT",
                                         **{same: same for same in ("init_r", "target_r", "tinit", "tfinal", "beta1",
                                                                    "beta2", "orth_reg_weight", "total_step")}},
                             extra=frozenset({"r", "rank_pattern"}))

    def trainable_params(self, spec: ModelSpec, cfg: AdaLoraConfig) -> int:
        return sum(cfg.init_r * (lin.in_features + lin.out_features + 1) for lin in selected_linears(spec, cfg))

    def memory_terms(self, spec: ModelSpec, cfg: AdaLoraConfig) -> MemoryTerms:
        from peftplan.methods.adalora.replay import ADALORA
        from peftplan.replay.terms import LinearAdapter, MemoryTerms

        r = cfg.init_r
        adapters = {
            lin.name: LinearAdapter(ADALORA, rank=r, dropout=cfg.dropout,
                                    tensors=((r, lin.in_features), (r, 1), (lin.out_features, r)), names=SUFFIXES)
            for lin in selected_linears(spec, cfg)
        }
        total = sum(a.delta_params for a in adapters.values())
        return MemoryTerms(
            adapter_params=total,
            frozen_adapter_params=len(adapters),  # ranknum
            quant=cfg.quant,
            linear_adapters=adapters,
            method_state=ALLOCATOR_COPIES * total,
            loss_terms=frozenset({"lora_A", "lora_B"}),
        )

    def peft_values(self, spec: ModelSpec, cfg: AdaLoraConfig) -> dict[str, Any]:
        return super().peft_values(spec, cfg) | {"total_step": cfg.planned_total_step(), "bias": "none"}

    def apply(self, model: nn.Module, cfg: AdaLoraConfig) -> nn.Module:
        return _freeze_ranknum(super().apply(model, cfg))

    def load(self, base: nn.Module, directory: Path, cfg: AdaLoraConfig) -> nn.Module:
        return _freeze_ranknum(super().load(base, directory, cfg))

    def for_steps(self, cfg: AdaLoraConfig, steps: int) -> AdaLoraConfig:
        return cfg if cfg.total_step is not None else self.make_config(**{**cfg.model_dump(), "total_step": steps})

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        # peft's documented loop: after optimizer.step(), before zero_grad (the scores read the gradients).
        tuner: Any = model.base_model
        tuner.update_and_allocate(step)

    def state_tensors(self, model: nn.Module) -> list[Any]:
        allocator = getattr(getattr(model, "base_model", None), "rankallocator", None)
        if allocator is None:
            return []
        return [t for scores in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in scores.values()]

    def merge(self, model: nn.Module) -> nn.Module:
        from peftplan.methods.quantize import has_quantized_linears

        if has_quantized_linears(model):
            return _merge_quantized(model)
        return super().merge(model)

    def search_space(self, trial: optuna.Trial) -> AdaLoraConfig:
        target = trial.suggest_categorical("target_r", [2, 4, 8, 16])
        ratio = trial.suggest_categorical("alpha_ratio", [1, 2])
        targets = trial.suggest_categorical("targets", ["attn", "mlp", "all-linear"])
        init = target * 3 // 2  # the paper's init_r = 1.5 x target_r
        return AdaLoraConfig(init_r=init, target_r=target, alpha=float(init * ratio), targets=[targets])


def _freeze_ranknum(model: nn.Module) -> nn.Module:
    """Keep `ranknum` frozen, as peft means it to be (it is never saved, so a trained one would not reload).

    peft 0.21 creates it frozen, but when it moves the adapter to its base layer's device or dtype (a GPU, a
    16-bit base, the meta device) the ParameterDict re-wraps the moved tensor as a new, trainable parameter.
    """
    for name, param in model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)
    return model


def _merge_quantized(model: nn.Module) -> nn.Module:
    """peft's bitsandbytes AdaLoRA layers cannot merge: each adapted layer becomes an fp32 Linear holding
    dequantize(W) + B·(A·E)·scaling/ranknum, as LoRA on a quantized base merges (`methods/quantize.py`)."""
    import torch
    from peft.tuners.adalora import AdaLoraLayer

    from peftplan.methods.quantize import merge_into_dequantized

    for layer in model.modules():
        if isinstance(layer, AdaLoraLayer) and not hasattr(layer, "get_delta_weight"):
            layer.get_delta_weight = _delta_weight(layer)  # what merge_into_dequantized reads
    with torch.no_grad():
        return merge_into_dequantized(model)


def _delta_weight(layer: Any) -> Any:
    def delta(adapter: str) -> Any:
        return (layer.lora_B[adapter] @ (layer.lora_A[adapter] * layer.lora_E[adapter]) * layer.scaling[adapter]
                / (layer.ranknum[adapter] + 1e-5))

    return delta


METHOD = AdaLora()
