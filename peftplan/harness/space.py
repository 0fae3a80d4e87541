"""A method's search space as a suite shapes it: suite choices and ranges, fixed settings, the learning rate.

A method's own `search_space(trial)` asks for settings by name (rank, alpha_ratio, targets, ...).
`SuiteTrial` stands between it and the Optuna trial: a fixed setting is returned without asking Optuna,
and a setting the suite gives a space for is sampled from that space instead. Settings the method does
not search itself (e.g. `quant` for LoRA) are sampled or fixed here and merged into its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from peftplan.harness.suite import MethodEntry, Suite
    from peftplan.methods.base import MethodConfig

LR = "lr"

def lr_defaults(method: str) -> tuple[float, float, float]:
    """(low, high, recipe) learning rate for a method (`Method.lr_range`)."""
    from peftplan.methods import get_method

    return get_method(method).lr_range


@dataclass(frozen=True)
class Distribution:
    """What a setting was sampled from: categorical choices or a numeric range."""

    kind: str  # "categorical", "int" or "float"
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return self.low <= value <= self.high and (self.kind == "float" or float(value).is_integer())


class SpaceRecorder:
    """A stand-in for an Optuna trial that records each suggested setting and returns its first value."""

    def __init__(self) -> None:
        self.distributions: dict[str, Distribution] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.distributions[name] = Distribution("categorical", tuple(choices))
        return list(choices)[0]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.distributions[name] = Distribution("int", low=low, high=high, log=log)
        return low

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        self.distributions[name] = Distribution("float", low=low, high=high, log=log)
        return low


def as_choice(value: Any) -> Any:
    """Optuna choices are scalars: a list choice (e.g. targets [q_proj, v_proj]) becomes 'q_proj,v_proj'."""
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else value


class SuiteTrial:
    """Wraps an Optuna trial (or a `SpaceRecorder`) so a method's search space follows the suite."""

    def __init__(self, trial: Any, entry: MethodEntry) -> None:
        self.trial = trial
        self.entry = entry
        self.asked: set[str] = set()
        self.overridden: dict[str, Any] = {}  # what the suite decided, by setting name

    def _from_suite(self, name: str) -> tuple[bool, Any]:
        if name not in self.overridden:
            found, value = self._decide(name)
            if not found:
                return False, None
            self.overridden[name] = value
        return True, self.overridden[name]

    def _decide(self, name: str) -> tuple[bool, Any]:
        if name in self.entry.fixed:
            return True, self.entry.fixed[name]
        spec = self.entry.space.get(name)
        if spec is None:
            return False, None
        if not isinstance(spec, list):  # a RangeSpec (a list is a categorical choice)
            if spec.is_int:
                step = int(spec.step) if spec.step is not None else 1
                return True, self.trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
            return True, self.trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
        return True, self.trial.suggest_categorical(name, [as_choice(c) for c in spec])

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.asked.add(name)
        overridden, value = self._from_suite(name)
        # A method expects one of its scalar choices back: a fixed list (targets) goes in as "a,b".
        return as_choice(value) if overridden else self.trial.suggest_categorical(name, choices)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.asked.add(name)
        overridden, value = self._from_suite(name)
        return value if overridden else self.trial.suggest_int(name, low, high, step=step, log=log)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        self.asked.add(name)
        overridden, value = self._from_suite(name)
        return value if overridden else self.trial.suggest_float(name, low, high, step=step, log=log)


@dataclass(frozen=True)
class SampledConfig:
    """One trial's method config and learning rate."""

    method: str
    config: MethodConfig
    lr: float

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.config.model_dump(mode="json"), "lr": self.lr}


def sample_config(trial: Any, entry: MethodEntry, suite: Suite) -> SampledConfig:
    """Sample one config of `entry` through `trial` (an Optuna trial or a `SpaceRecorder`).

    Raises:
        BadInputError: the sampled values do not make a valid config.
    """
    from peftplan.methods import get_method

    method = get_method(entry.name)
    proxy = SuiteTrial(trial, entry)
    config = method.search_space(cast(Any, proxy))  # a duck-typed optuna.Trial
    # What the suite decided wins over how the method built its config (e.g. `targets: [q_proj, v_proj]`,
    # which a method would wrap as one name), and settings the method does not search are added.
    extra: dict[str, Any] = {}
    for name in method.config_cls.model_fields:
        if name in entry.space or name in entry.fixed:
            extra[name] = proxy._from_suite(name)[1]
    if extra:
        config = method.make_config(**{**config.model_dump(), **extra})
    return SampledConfig(method.name, config, _sample_lr(proxy, entry, suite))


def _sample_lr(proxy: SuiteTrial, entry: MethodEntry, suite: Suite) -> float:
    if LR not in entry.fixed and LR not in entry.space and suite.training.lr is not None:
        return suite.training.lr
    low, high, _ = lr_defaults(entry.name)
    return float(proxy.suggest_float(LR, low, high, log=True))


def search_distributions(entry: MethodEntry, suite: Suite) -> dict[str, Distribution]:
    """The settings a trial of `entry` asks Optuna for, with their distributions."""
    recorder = SpaceRecorder()
    sample_config(recorder, entry, suite)
    return recorder.distributions


def recipe_params(entry: MethodEntry, suite: Suite) -> dict[str, Any]:
    """The literature recipe as Optuna params: the method's default config (LoRA: r=16, alpha=32,
    all-linear) and its recipe learning rate (LoRA: 1e-4), limited to values inside the suite's space."""
    from peftplan.methods import get_method

    defaults = get_method(entry.name).make_config().model_dump(mode="json")
    wanted: dict[str, Any] = {k: as_choice(v) for k, v in defaults.items()}
    if "rank" in defaults and "alpha" in defaults:
        ratio = defaults["alpha"] / defaults["rank"]
        wanted["alpha_ratio"] = int(ratio) if float(ratio).is_integer() else ratio
    wanted[LR] = lr_defaults(entry.name)[2]
    params = {}
    for name, dist in search_distributions(entry, suite).items():
        if name in wanted and dist.contains(wanted[name]):
            params[name] = wanted[name]
    return params


def known_settings(method_name: str) -> set[str]:
    """Every name a suite may put in a method's `space` or `fixed`."""
    from peftplan.methods import get_method

    method = get_method(method_name)
    recorder = SpaceRecorder()
    method.search_space(cast(Any, recorder))
    return set(method.config_cls.model_fields) | set(recorder.distributions) | {LR}
