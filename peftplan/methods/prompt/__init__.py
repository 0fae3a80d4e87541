"""Prompt tuning: trainable soft-prompt embeddings prepended to the input (Lester et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from peftplan.methods._peft import PeftMethod
from peftplan.methods.base import MethodConfig, PeftFields, Traits

if TYPE_CHECKING:
    import optuna

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class VirtualTokensConfig(MethodConfig):
    """Settings of the prompt-learning methods."""

    virtual_tokens: int = Field(20, ge=1, le=4096, description="Number of virtual tokens.")


def token_dim(spec: ModelSpec) -> int:
    """peft's token dimension: the language model's hidden size."""
    text = spec.text_config
    return int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or spec.hidden_size)


class PromptLearning(PeftMethod[VirtualTokensConfig]):
    """What peft's prompt-learning methods share: virtual tokens, no merge, inference-only reloads."""

    traits = Traits(mergeable=False, inference_overhead="extra-tokens")
    peft_fields = PeftFields("PROMPT_TUNING", {"virtual_tokens": "num_virtual_tokens"}, targets=None,
                             required=("num_virtual_tokens",))
    reload_trainable = False

    def search_space(self, trial: optuna.Trial) -> VirtualTokensConfig:
        return VirtualTokensConfig(virtual_tokens=trial.suggest_categorical("virtual_tokens", [10, 20, 50, 100]))


class PromptTuning(PromptLearning):
    name = "prompt"
    lr_range = (1e-3, 1e-1, 3e-2)
    summary = "Soft prompt of virtual token embeddings; the base is untouched; costs extra sequence length."

    def trainable_params(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> int:
        return cfg.virtual_tokens * token_dim(spec)

    def memory_terms(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        return MemoryTerms(
            adapter_params=self.trainable_params(spec, cfg),
            extra_tokens=cfg.virtual_tokens,
            extra_tensors=((cfg.virtual_tokens, token_dim(spec)),),
            extra_names=("prompt_embeddings",),
        )


METHOD = PromptTuning()
