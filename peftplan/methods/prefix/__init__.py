"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from peftplan.methods.prompt import PromptLearning, VirtualTokensConfig, token_dim

if TYPE_CHECKING:
    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


def kv_width(spec: ModelSpec) -> int:
    """Width of one key (or value) prefix vector, as peft sizes it (grouped-query aware)."""
    text = spec.text_config
    if "num_key_value_heads" not in text:
        return token_dim(spec)
    head_dim = text.get("head_dim") or token_dim(spec) // spec.num_heads
    return int(head_dim) * int(text["num_key_value_heads"])


class PrefixTuning(PromptLearning):
    name = "prefix"
    lr_range = (1e-3, 1e-1, 1e-2)
    summary = "Trainable key/value prefixes in every layer; the base is untouched; lengthens attention."
    traits = replace(PromptLearning.traits, checkpointing=False)
    peft_fields = replace(PromptLearning.peft_fields, peft_type="PREFIX_TUNING")

    def trainable_params(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> int:
        return cfg.virtual_tokens * spec.num_layers * 2 * kv_width(spec)

    def memory_terms(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        width = spec.num_layers * 2 * kv_width(spec)
        return MemoryTerms(
            adapter_params=self.trainable_params(spec, cfg),
            prefix_tokens=cfg.virtual_tokens,
            extra_tensors=((cfg.virtual_tokens, width),),
            extra_names=("prompt_embeddings",),
        )


METHOD = PrefixTuning()
