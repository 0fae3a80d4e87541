"""BitFit: train only the bias terms (Ben Zaken et al., 2022). Hand-written: peft has no BitFit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftplan.errors import UnsupportedError
from peftplan.methods.base import Method, MethodConfig, Traits

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class BitFitConfig(MethodConfig):
    """BitFit has no settings: every bias trains, nothing else does."""


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


class BitFit(Method[BitFitConfig]):
    name = "bitfit"
    lr_range = (1e-4, 1e-2, 1e-3)
    summary = "Only bias terms train; tiny and free at inference; needs a model with biases."
    traits = Traits(mergeable=True, inference_overhead="none")  # the biases are the model's own

    def check(self, spec: ModelSpec, cfg: BitFitConfig) -> None:
        if self.trainable_params(spec, cfg) == 0:
            raise UnsupportedError(
                f"bitfit needs bias terms, and {spec.model_id or spec.architecture} has none "
                "(e.g. Llama-style models without attention_bias/mlp_bias)"
            )

    def trainable_params(self, spec: ModelSpec, cfg: BitFitConfig) -> int:
        return sum(p.numel for p in spec.params if p.tied_to is None and _is_bias(p.name) and not spec.is_frozen(p.name))

    def memory_terms(self, spec: ModelSpec, cfg: BitFitConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        return MemoryTerms(trainable_base="biases")

    def apply(self, model: nn.Module, cfg: BitFitConfig) -> nn.Module:
        from peftplan.models.spec import ModelSpec

        self.check(ModelSpec.from_model(model), cfg)
        for name, param in model.named_parameters():
            param.requires_grad_(_is_bias(name))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def search_space(self, trial: optuna.Trial) -> BitFitConfig:
        return BitFitConfig()


METHOD = BitFit()
