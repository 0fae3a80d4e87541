"""Full fine-tuning: every parameter trains. The baseline the PEFT methods are measured against."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peftplan.methods.base import Method, MethodConfig, Traits

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from peftplan.models.spec import ModelSpec
    from peftplan.replay.terms import MemoryTerms


class FullConfig(MethodConfig):
    """Full fine-tuning has no method-specific settings."""


class FullFineTuning(Method[FullConfig]):
    name = "full"
    lr_range = (1e-6, 1e-4, 2e-5)
    summary = "All weights train; best quality ceiling, largest memory; one full copy per task."
    traits = Traits(mergeable=True, inference_overhead="none", whole_base=True)  # the weights themselves changed

    def trainable_params(self, spec: ModelSpec, cfg: FullConfig) -> int:
        return spec.trainable_base_params  # a VLM's frozen vision tower does not train

    def memory_terms(self, spec: ModelSpec, cfg: FullConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        return MemoryTerms(trainable_base="all")

    def apply(self, model: nn.Module, cfg: FullConfig) -> nn.Module:
        model.requires_grad_(True)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def _save_weights(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_model

        save_model(model, str(directory / "adaptation.safetensors"))  # handles tied weights

    def load(self, base: nn.Module, directory: Path, cfg: FullConfig) -> nn.Module:
        from safetensors.torch import load_model

        load_model(base, str(directory / "adaptation.safetensors"))
        return self.apply(base, cfg)

    def search_space(self, trial: optuna.Trial) -> FullConfig:
        return FullConfig()


METHOD = FullFineTuning()
