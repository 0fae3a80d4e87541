"""The Method ABC and the config base class every method module builds on."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from peftplan.errors import BadInputError, suggest
from peftplan.replay.terms import MemoryTerms
from peftplan.replay.terms import Quant as Quant  # re-exported: methods and the planner import it from here

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from peftplan.models.spec import ModelSpec

InferenceOverhead = Literal["none", "unmerged-matmul", "extra-tokens", "extra-layers"]
MANIFEST = "peftplan_method.json"


@dataclass(frozen=True)
class Traits:
    """What a method can do, declared in one place and read by the planner, the harness and the CLI."""

    mergeable: bool  # folds into the base weights (full fine-tuning: the weights themselves changed)
    inference_overhead: InferenceOverhead  # what serving unmerged costs
    quantized_base: bool = False  # trains on a bitsandbytes 4/8-bit base
    # transformers drops prefix tuning's key/values inside checkpointed blocks (checked on 5.23).
    checkpointing: bool = True
    whole_base: bool = False  # full fine-tuning: stacks pick their full-model recipes
    conv1d: bool = True  # adapts GPT-2 style transformers Conv1D layers


@dataclass(frozen=True)
class PeftFields:
    """How a method's settings map onto the fields of its peft config class, in both directions.

    `names` maps a peftplan setting to peft's field; `targets` is peft's field for the modules to adapt
    (None for prompt learning); `extra` lists other fields the method reads itself, and `required` those
    that must not be null in an adapter_config.json.
    """

    peft_type: str
    names: Mapping[str, str]
    targets: str | None = "target_modules"
    extra: frozenset[str] = frozenset()
    required: tuple[str, ...] = ("target_modules",)
    modelled: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        targets = {self.targets} if self.targets else set()
        object.__setattr__(self, "modelled", frozenset(self.names.values()) | targets | self.extra)


class MethodConfig(BaseModel):
    """Base of every method config: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_message(method: str, cls: type[BaseModel], exc: ValidationError) -> str:
    """One line from a pydantic error: the field, what is wrong, and a did-you-mean for unknown keys."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        close = suggest(field, cls.model_fields)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Known: {', '.join(cls.model_fields)}."
        return f"unknown {method} setting {field!r}.{hint}"
    return f"invalid {method} setting {field}={err.get('input')!r}: {err['msg']}"


ConfigT = TypeVar("ConfigT", bound=MethodConfig)


class Method(ABC, Generic[ConfigT]):
    """A PEFT method: its config, exact trainable-parameter count, and how to build it for real.

    Generic in its config class, so each method's code is typed against its own settings.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]  # the class's generic argument unless set (QLoRA's on LoRA's code)
    traits: ClassVar[Traits]
    # (low, high, recipe) learning rate the search samples from; the recipe is the literature's default.
    lr_range: ClassVar[tuple[float, float, float]] = (1e-5, 1e-3, 1e-4)
    # Reading a peft adapter_config.json (`methods/peft_config.py`): the first registered method of a
    # peft_type reads it.
    peft_fields: ClassVar[PeftFields | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_cls" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            config = next(iter(get_args(base)), None)
            if isinstance(config, type) and issubclass(config, MethodConfig):
                cls.config_cls = config

    def make_config(self, **values: Any) -> ConfigT:
        """Validate `values` (None entries mean "use the default") into this method's config.

        Raises:
            BadInputError: an unknown or invalid setting, in one line.
        """
        given = {k: v for k, v in values.items() if v is not None}
        try:
            return cast("ConfigT", self.config_cls(**given))
        except ValidationError as exc:
            raise BadInputError(validation_message(self.name, self.config_cls, exc)) from None

    def check(self, spec: ModelSpec, cfg: ConfigT) -> None:  # noqa: B027 - optional hook
        """Raise `BadInputError` if the method cannot apply to `spec` with `cfg`."""

    @abstractmethod
    def trainable_params(self, spec: ModelSpec, cfg: ConfigT) -> int:
        """Exact number of trainable parameters, computed from the spec alone."""

    def memory_terms(self, spec: ModelSpec, cfg: ConfigT) -> MemoryTerms:
        """What this method changes in a training step's memory (priced by `peftplan.planner`).

        The default describes a frozen base plus `trainable_params` new fp32 parameters; methods that
        adapt Linears, train base parameters or change the sequence override it.
        """
        return MemoryTerms(adapter_params=self.trainable_params(spec, cfg))

    def for_steps(self, cfg: ConfigT, steps: int) -> ConfigT:
        """`cfg` for a training run of `steps` optimizer steps (a schedule that needs the run's length)."""
        return cfg

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:  # noqa: B027 - optional hook
        """Called by the training loop after each `optimizer.step()` (`step`: its 0-based index), before the
        gradients are released; the traced step runs it too. Default: nothing."""

    def state_tensors(self, model: nn.Module) -> list[Any]:
        """The tensors `after_optimizer_step` keeps between steps (priced as `MemoryTerms.method_state`), for
        the live-bytes measurements, which count only the tensors they are shown."""
        return []

    def from_peft(self, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The registered method name and settings that reproduce peft config `raw` (its `peft_type`'s)."""
        raise NotImplementedError(f"{self.name} does not read peft configs")

    @abstractmethod
    def apply(self, model: nn.Module, cfg: ConfigT) -> nn.Module:
        """Make `model` trainable with this method; returns the model to train."""

    @abstractmethod
    def search_space(self, trial: optuna.Trial) -> ConfigT:
        """A config sampled for an Optuna trial."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the adaptation into the base weights (only for mergeable methods)."""
        raise BadInputError(f"{self.name} cannot be merged into the base model")

    def save(self, model: nn.Module, directory: Path, cfg: ConfigT) -> None:
        """Write the trained adaptation (safetensors) and a manifest naming the method and config."""
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(model, directory)
        manifest = {"method": self.name, "config": cfg.model_dump(mode="json")}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))

    def load(self, base: nn.Module, directory: Path, cfg: ConfigT) -> nn.Module:
        """Rebuild the adapted model from a fresh base and a saved directory."""
        model = self.apply(base, cfg)
        _load_trainable_safetensors(model, directory / "adaptation.safetensors")
        return model

    def _save_weights(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(directory / "adaptation.safetensors"))


def _load_trainable_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise BadInputError(f"{path} holds tensors this model does not have: {sorted(missing)[:3]}")
    for name, tensor in state.items():
        params[name].data.copy_(tensor)


def load_adapted(base: nn.Module, directory: Path) -> nn.Module:
    """Load whatever method a directory written by `Method.save` holds onto `base`."""
    from peftplan.methods import get_method

    path = directory / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{directory} has no {MANIFEST}; was it written by peftplan?")
    manifest = json.loads(path.read_text())
    method = get_method(manifest["method"])
    return method.load(base, directory, method.make_config(**manifest["config"]))
