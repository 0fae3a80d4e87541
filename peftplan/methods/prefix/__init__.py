"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from peftplan.methods._peft import PeftMethod
from peftplan.methods._peft import task_type as peft_task_type
from peftplan.methods.prompt import VirtualTokensConfig, token_dim

if TYPE_CHECKING:
    import optuna
    from peft import PeftConfig

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


def kv_width(spec: ModelSpec) -> int:
    """Width of one key (or value) prefix vector, as peft sizes it (grouped-query aware)."""
    text = spec.text_config
    if "num_key_value_heads" not in text:
        return token_dim(spec)
    head_dim = text.get("head_dim") or token_dim(spec) // spec.num_heads
    return int(head_dim) * int(text["num_key_value_heads"])


class PrefixTuning(PeftMethod[VirtualTokensConfig]):
    name = "prefix"
    lr_range = (1e-3, 1e-1, 1e-2)
    supports_checkpointing = False
    summary = "Trainable key/value prefixes in every layer; the base is untouched; lengthens attention."
    config_cls: ClassVar[type[VirtualTokensConfig]] = VirtualTokensConfig
    mergeable = False
    inference_overhead = "extra-tokens"
    reload_trainable = False
    peft_type = "PREFIX_TUNING"
    peft_fields = frozenset({"num_virtual_tokens"})
    peft_required = ("num_virtual_tokens",)

    def trainable_params(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> int:
        return cfg.virtual_tokens * spec.num_layers * 2 * kv_width(spec)

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.name, {"virtual_tokens": raw["num_virtual_tokens"]}

    def memory_terms(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        width = spec.num_layers * 2 * kv_width(spec)
        return MemoryTerms(
            adapter_params=self.trainable_params(spec, cfg),
            prefix_tokens=cfg.virtual_tokens,
            extra_tensors=((cfg.virtual_tokens, width),),
            extra_names=("prompt_embeddings",),
        )

    def peft_config(self, spec: ModelSpec, cfg: VirtualTokensConfig) -> PeftConfig:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type=peft_task_type(spec))

    def search_space(self, trial: optuna.Trial) -> VirtualTokensConfig:
        return VirtualTokensConfig(virtual_tokens=trial.suggest_categorical("virtual_tokens", [10, 20, 50, 100]))


METHOD = PrefixTuning()
