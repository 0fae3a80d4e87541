"""IA3: learned vectors that rescale activations (Liu et al., 2022).

Attention-side targets rescale their output; feed-forward output projections rescale their input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from peftplan.methods._peft import PeftMethod, TargetedConfig, selected_linears
from peftplan.methods._peft import task_type as peft_task_type
from peftplan.methods.targets import peft_target_pattern

if TYPE_CHECKING:
    from peft import PeftConfig

    from peftplan.methods.memory import MemoryTerms
    from peftplan.models.spec import LinearInfo, ModelSpec


class IA3Config(TargetedConfig):
    """IA3 settings: only which Linear layers to rescale."""


def is_ffn_output(linear: LinearInfo) -> bool:
    """A feed-forward down projection (IA3 scales its input rather than its output)."""
    return linear.role == "mlp" and linear.in_features > linear.out_features


class IA3(PeftMethod):
    name = "ia3"
    summary = "Learned rescaling vectors on activations; tiny, merges into the base."
    config_cls: ClassVar[type[IA3Config]] = IA3Config
    mergeable = True
    inference_overhead = "unmerged-matmul"
    supports_quantized_base = True

    def trainable_params(self, spec: ModelSpec, cfg: Any) -> int:
        return sum(
            lin.in_features if is_ffn_output(lin) else lin.out_features for lin in selected_linears(spec, cfg)
        )

    def memory_terms(self, spec: ModelSpec, cfg: Any) -> MemoryTerms:
        from peftplan.methods.memory import LinearAdapter, MemoryTerms

        adapters = {
            lin.name: LinearAdapter("ia3_in", tensors=((1, lin.in_features),), names=("ia3_l",))
            if is_ffn_output(lin)
            else LinearAdapter("ia3_out", tensors=((lin.out_features, 1),), names=("ia3_l",))
            for lin in selected_linears(spec, cfg)
        }
        total = sum(a.delta_params for a in adapters.values())
        return MemoryTerms(adapter_params=total, linear_adapters=adapters)

    def peft_config(self, spec: ModelSpec, cfg: Any) -> PeftConfig:
        from peft import IA3Config as PeftIA3Config

        selected = selected_linears(spec, cfg)
        feedforward = [lin for lin in selected if is_ffn_output(lin)]
        return PeftIA3Config(
            target_modules=peft_target_pattern(spec, selected),
            feedforward_modules=peft_target_pattern(spec, feedforward) if feedforward else [],
            task_type=peft_task_type(spec),
        )

    def search_space(self, trial: Any) -> Any:
        return IA3Config(targets=[trial.suggest_categorical("targets", ["attn", "mlp", "all-linear"])])


METHOD = IA3()
