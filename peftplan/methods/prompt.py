"""Prompt tuning: trainable soft-prompt embeddings prepended to the input (Lester et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from peftplan.methods._peft import PeftMethod
from peftplan.methods._peft import task_type as peft_task_type
from peftplan.methods.base import MethodConfig

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftplan.methods.memory import MemoryTerms
    from peftplan.models.spec import ModelSpec


class VirtualTokensConfig(MethodConfig):
    """Settings of the prompt-learning methods."""

    virtual_tokens: int = Field(20, ge=1, le=4096, description="Number of virtual tokens.")


def token_dim(spec: ModelSpec) -> int:
    """peft's token dimension: the language model's hidden size."""
    text = spec.text_config
    return int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or spec.hidden_size)


class PromptTuning(PeftMethod):
    name = "prompt"
    summary = "Soft prompt of virtual token embeddings; the base is untouched; costs extra sequence length."
    config_cls: ClassVar[type[VirtualTokensConfig]] = VirtualTokensConfig
    mergeable = False
    inference_overhead = "extra-tokens"
    reload_trainable = False

    def trainable_params(self, spec: ModelSpec, cfg: Any) -> int:
        return cfg.virtual_tokens * token_dim(spec)

    def memory_terms(self, spec: ModelSpec, cfg: Any) -> MemoryTerms:
        from peftplan.methods.memory import MemoryTerms

        return MemoryTerms(
            adapter_params=self.trainable_params(spec, cfg),
            extra_tokens=cfg.virtual_tokens,
            extra_tensors=((cfg.virtual_tokens, token_dim(spec)),),
            extra_names=("prompt_embeddings",),
        )

    def peft_config(self, spec: ModelSpec, cfg: Any) -> PeftConfig:
        from peft import PromptTuningConfig

        return PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type=peft_task_type(spec))

    def search_space(self, trial: Any) -> Any:
        return VirtualTokensConfig(virtual_tokens=trial.suggest_categorical("virtual_tokens", [10, 20, 50, 100]))


METHOD = PromptTuning()
