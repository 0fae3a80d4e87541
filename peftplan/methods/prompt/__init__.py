"""Prompt tuning: trainable soft-prompt embeddings prepended to the input (Lester et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from peftplan.methods._peft import PeftMethod
from peftplan.methods._peft import task_type as peft_task_type
from peftplan.methods.base import MethodConfig

if TYPE_CHECKING:
    import optuna
    from peft import PeftConfig

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class VirtualTokensConfig(MethodConfig):
    """Settings of the prompt-learning methods."""

    virtual_tokens: int = Field(20, ge=1, le=4096, description="Number of virtual tokens.")


def token_dim(spec: ModelSpec) -> int:
    """peft's token dimension: the language model's hidden size."""
    text = spec.text_config
    return int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or spec.hidden_size)


class PromptTuning(PeftMethod[VirtualTokensConfig]):
    name = "prompt"
    lr_range = (1e-3, 1e-1, 3e-2)
    summary = "Soft prompt of virtual token embeddings; the base is untouched; costs extra sequence length."
    config_cls: ClassVar[type[VirtualTokensConfig]] = VirtualTokensConfig
    mergeable = False
    inference_overhead = "extra-tokens"
    reload_trainable = False
    peft_type = "PROMPT_TUNING"
    peft_fields = frozenset({"num_virtual_tokens"})
    peft_required = ("num_virtual_tokens",)

    def trainable_params(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> int:
        return cfg.virtual_tokens * token_dim(spec)

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.name, {"virtual_tokens": raw["num_virtual_tokens"]}

    def memory_terms(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        return MemoryTerms(
            adapter_params=self.trainable_params(spec, cfg),
            extra_tokens=cfg.virtual_tokens,
            extra_tensors=((cfg.virtual_tokens, token_dim(spec)),),
            extra_names=("prompt_embeddings",),
        )

    def peft_config(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> PeftConfig:
        from peft import PromptTuningConfig

        return PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type=peft_task_type(spec))

    def search_space(self, trial: optuna.Trial) -> VirtualTokensConfig:
        return VirtualTokensConfig(virtual_tokens=trial.suggest_categorical("virtual_tokens", [10, 20, 50, 100]))


METHOD = PromptTuning()
