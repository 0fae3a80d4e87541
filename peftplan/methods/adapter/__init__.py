"""Bottleneck adapters with Houlsby placement (Houlsby et al., 2019). Hand-written: peft has none.

Each block gets two adapters: after the attention output projection and after the MLP's output
projection. An adapter is down-projection, nonlinearity, up-projection, with the residual inside, and
starts as the identity (zero-initialised up-projection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from peftplan.errors import UnsupportedError
from peftplan.methods.base import Method, MethodConfig, Traits

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from peftplan.models.spec import LinearInfo, ModelSpec
    from peftplan.replay.terms import MemoryTerms


class AdapterConfig(MethodConfig):
    """Bottleneck adapter settings."""

    bottleneck: int = Field(64, ge=1, le=65536, description="Bottleneck width.")
    activation: Literal["relu", "gelu", "silu"] = Field("relu", description="Nonlinearity inside the bottleneck.")


def adapter_sites(spec: ModelSpec) -> list[LinearInfo]:
    """The projections each block's adapters follow: attention output, then MLP output."""
    sites: list[LinearInfo] = []
    for index in range(spec.num_layers):
        block = spec.layer_linears(index)
        for role in ("attn", "mlp"):
            outputs = [lin for lin in block if lin.role == role and lin.out_features == spec.hidden_size]
            if not outputs:
                raise UnsupportedError(
                    f"adapter needs an {role} output projection in every block; "
                    f"{spec.model_id or spec.architecture} block {index} has none (e.g. fused MoE experts)"
                )
            sites.append(outputs[-1])  # the last one in module order is the output projection
    return sites


def _adapter_modules() -> tuple[type, type]:
    """The torch modules, defined lazily so that importing this file stays free of torch."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, hidden: int, size: int, activation: str, device: torch.device) -> None:
            super().__init__()
            # fp32 like peft's adapters, whatever the base dtype.
            self.down = nn.Linear(hidden, size, device=device, dtype=torch.float32)
            self.up = nn.Linear(size, hidden, device=device, dtype=torch.float32)
            self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU()}[activation]
            if device.type != "meta":
                nn.init.zeros_(self.up.weight)
                nn.init.zeros_(self.up.bias)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            update = self.up(self.act(self.down(hidden.to(self.down.weight.dtype))))
            return hidden + update.to(hidden.dtype)

    class WithAdapter(nn.Module):
        def __init__(self, base: nn.Module, adapter: nn.Module) -> None:
            super().__init__()
            self.base = base
            self.adapter = adapter

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.adapter(self.base(x))

    return Bottleneck, WithAdapter


class BottleneckAdapter(Method[AdapterConfig]):
    name = "adapter"
    summary = "Houlsby bottleneck adapters after attention and MLP; adds layers, cannot merge."
    traits = Traits(mergeable=False, inference_overhead="extra-layers", quantized_base=True)

    def check(self, spec: ModelSpec, cfg: AdapterConfig) -> None:
        adapter_sites(spec)

    def trainable_params(self, spec: ModelSpec, cfg: AdapterConfig) -> int:
        h, b = spec.hidden_size, cfg.bottleneck
        return len(adapter_sites(spec)) * (2 * h * b + b + h)

    def memory_terms(self, spec: ModelSpec, cfg: AdapterConfig) -> MemoryTerms:
        from peftplan.replay.terms import MemoryTerms

        h, b = spec.hidden_size, cfg.bottleneck
        sites = adapter_sites(spec)
        return MemoryTerms(
            adapter_params=self.trainable_params(spec, cfg),
            bottleneck=cfg.bottleneck,
            bottleneck_sites=tuple(site.name for site in sites),
            bottleneck_activation=cfg.activation,
            extra_tensors=((b, h), (b,), (h, b), (h,)) * len(sites),
            extra_names=tuple(
                f"{site.name}.adapter.{part}" for site in sites for part in ("down.weight", "down.bias", "up.weight", "up.bias")
            ),
        )

    def apply(self, model: nn.Module, cfg: AdapterConfig) -> nn.Module:
        from peftplan.models.spec import ModelSpec

        spec = ModelSpec.from_model(model)
        sites = adapter_sites(spec)
        bottleneck_cls, wrapper_cls = _adapter_modules()
        model.requires_grad_(False)
        for site in sites:
            parent_name, _, child = site.name.rpartition(".")
            parent = model.get_submodule(parent_name)
            base = getattr(parent, child)
            device = next(base.parameters()).device
            adapter = bottleneck_cls(spec.hidden_size, cfg.bottleneck, cfg.activation, device)
            setattr(parent, child, wrapper_cls(base, adapter))
        return model

    def search_space(self, trial: optuna.Trial) -> AdapterConfig:
        return AdapterConfig(bottleneck=trial.suggest_categorical("bottleneck", [16, 32, 64, 128]))


METHOD = BottleneckAdapter()
