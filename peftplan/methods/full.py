"""Full fine-tuning: every parameter trains. The baseline the PEFT methods are measured against."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from peftplan.methods.base import Method, MethodConfig

if TYPE_CHECKING:
    from torch import nn

    from peftplan.methods.memory import MemoryTerms
    from peftplan.models.spec import ModelSpec


class FullConfig(MethodConfig):
    """Full fine-tuning has no method-specific settings."""


class FullFineTuning(Method):
    name = "full"
    trains_whole_base = True
    summary = "All weights train; best quality ceiling, largest memory; one full copy per task."
    config_cls: ClassVar[type[FullConfig]] = FullConfig
    mergeable = True  # nothing to merge: the weights themselves changed
    inference_overhead = "none"

    def trainable_params(self, spec: ModelSpec, cfg: Any) -> int:
        return spec.total_params

    def memory_terms(self, spec: ModelSpec, cfg: Any) -> MemoryTerms:
        from peftplan.methods.memory import MemoryTerms

        return MemoryTerms(trainable_base="all")

    def apply(self, model: nn.Module, cfg: Any) -> nn.Module:
        model.requires_grad_(True)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def _save_weights(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_model

        save_model(model, str(directory / "adaptation.safetensors"))  # handles tied weights

    def load(self, base: nn.Module, directory: Path, cfg: Any) -> nn.Module:
        from safetensors.torch import load_model

        load_model(base, str(directory / "adaptation.safetensors"))
        return self.apply(base, cfg)

    def search_space(self, trial: Any) -> Any:
        return FullConfig()


METHOD = FullFineTuning()
