"""The bench suite: a YAML file with nested sections, validated by pydantic with `extra="forbid"`.

Every error is one line that names the field path (`methods[0].space.rnak`) and, for unknown keys or
names, offers a did-you-mean. Paths inside a suite are relative to the suite file's directory.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from peftplan.errors import BadInputError, UnknownNameError, suggest
from peftplan.harness.embedded import EMBEDDED_ID
from peftplan.harness.units import parse_bytes, parse_seconds

GENERATED_TASKS = ("wordgroups", "parity", "addition")
TRAINING_KNOBS = ("lr",)  # searchable per method besides the method's own settings


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _optional_bytes(value: Any) -> int | None:
    return None if value is None else parse_bytes(value)


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else parse_seconds(value)


# Serialised as "<n>B", so a resolved suite parses back to the same bytes (a bare number means GiB).
Bytes = Annotated[
    int | None,
    BeforeValidator(_optional_bytes),
    PlainSerializer(lambda v: None if v is None else f"{v}B", return_type=str | None),
]
Seconds = Annotated[float | None, BeforeValidator(_optional_seconds)]


class ModelSection(Section):
    """Which model to fine-tune."""

    id: str = Field(EMBEDDED_ID, description="Catalog id or alias, local directory, Hub id, or 'embedded'.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Weight dtype; auto is bf16 on CUDA and on CPUs with native bf16, else fp32."
    )
    config: dict[str, Any] | None = Field(None, description="An inline config.json: random weights (tests).")
    random_init: bool = Field(False, description="Random weights from the model's config instead of its weights.")
    tokenizer: str | None = Field(None, description="'bytes' (a built-in byte-level tokenizer) or a directory.")
    trust_remote_code: bool = False

    @property
    def display_id(self) -> str:
        """The id result files show: the model id, or what an inline config describes."""
        if self.config is None:
            return self.id
        name = self.config.get("_name_or_path") or self.config.get("model_type", "model")
        return f"inline:{name}"

    @model_validator(mode="after")
    def _random_weights_need_a_tokenizer(self) -> ModelSection:
        if self.config is not None:
            self.random_init = True
            if "model_type" not in self.config:
                raise ValueError("config: an inline config needs a 'model_type' key (config.json shape)")
        if self.random_init and self.tokenizer is None:
            raise ValueError("tokenizer: random weights need a tokenizer ('bytes' or a directory)")
        return self


class SourceSection(Section):
    """Where examples come from: exactly one of a local file, a Hub dataset or a generated task."""

    path: str | None = Field(None, description="A local .jsonl, .json, .csv or .tsv file.")
    hf: str | None = Field(None, description="A Hugging Face dataset name (needs the network).")
    hf_config: str | None = None
    split: str = Field("train", description="The split of a Hub dataset.")
    generated: str | None = Field(None, description=f"A task peftplan generates: {', '.join(GENERATED_TASKS)}.")
    size: int = Field(2000, ge=1, le=10_000_000, description="Examples to generate.")
    format: Literal["auto", "jsonl", "json", "csv", "tsv"] = "auto"
    columns: list[str] | None = Field(None, description="Column names of a header-less csv/tsv file.")

    @field_validator("generated")
    @classmethod
    def _known_generator(cls, value: str | None) -> str | None:
        if value is not None and value not in GENERATED_TASKS:
            raise ValueError(str(UnknownNameError("generated task", value, GENERATED_TASKS)))
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SourceSection:
        given = [name for name in ("path", "hf", "generated") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hf or generated (got {', '.join(given) or 'none'})")
        return self


class TaskSection(Section):
    """What to fine-tune on and how to score it."""

    kind: Literal["classification", "generation", "multiple_choice"] | None = Field(
        None, description="Generated tasks bring their own kind."
    )
    name: str | None = None
    train: SourceSection
    eval: SourceSection | None = Field(None, description="A separate eval source; else a seeded holdout of train.")
    prompt: str | None = Field(None, description="Prompt template, e.g. 'Review: {sentence}\\nSentiment:'.")
    target: str | None = Field(None, description="Target template, e.g. '{label}'.")
    labels: dict[str, str] | None = Field(None, description="Classification: target value -> label word.")
    choices: str | list[str] | None = Field(None, description="Multiple choice: '{field}' of a list, or templates.")
    answer: str | None = Field(None, description="Multiple choice: template giving the index of the right choice.")
    answer_regex: str = Field(r"(-?[\d,]*\.?\d+)\D*$", description="Generation: what to compare (group 1).")
    chat_template: bool = Field(False, description="Wrap the prompt in the tokenizer's chat template.")
    system_prompt: str | None = None
    holdout: int = Field(256, ge=1, description="Examples split off train for evaluation when eval is not given.")
    max_train: int | None = Field(None, ge=1, description="Subsample the train split to this many examples.")
    seed: int = 0
    fallback: TaskSection | None = Field(None, description="Used instead when a file of this task is missing.")

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys_as_strings(cls, value: Any) -> Any:
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("answer_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> TaskSection:
        if self.train.generated is not None:
            return self
        if self.kind is None:
            raise ValueError("kind: give classification, generation or multiple_choice")
        if self.prompt is None:
            raise ValueError("prompt: a prompt template is required")
        if self.kind == "classification" and not self.labels:
            raise ValueError("labels: classification needs label words (target value -> word)")
        if self.kind == "multiple_choice" and (self.choices is None or self.answer is None):
            raise ValueError("choices/answer: multiple choice needs both")
        if self.kind in ("classification", "generation") and self.target is None:
            raise ValueError("target: a target template is required")
        if self.fallback is not None and self.fallback.fallback is not None:
            raise ValueError("fallback: a fallback task cannot have its own fallback")
        return self


class RangeSpec(Section):
    """A numeric search range; integers when both bounds are integers."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high)) and isinstance(self.step, int | None)


class MethodEntry(Section):
    """One method to benchmark: its search space and fixed settings."""

    name: str
    label: str | None = Field(None, description="Names the study and result files; defaults to the method name.")
    space: dict[str, list[Any] | RangeSpec] = Field(
        default_factory=dict, description="Per setting: a list of choices or a {low, high, log} range."
    )
    fixed: dict[str, Any] = Field(default_factory=dict, description="Settings every trial of this method uses.")
    trials: int | None = Field(None, ge=1, description="Overrides search.trials for this method.")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="Params to try first (after the recipe), e.g. [{rank: 8, lr: 3.0e-4}]."
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        from peftplan.methods import get_method

        try:
            return get_method(value).name
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("label")
    @classmethod
    def _file_safe(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.]*", value):
            raise ValueError(f"{value!r}: use letters, digits, '_' and '.' only (it names files)")
        return value

    @field_validator("space")
    @classmethod
    def _non_empty_choices(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, spec in value.items():
            if isinstance(spec, list) and not spec:
                raise ValueError(f"{key}: give at least one choice")
        return value

    @model_validator(mode="after")
    def _known_settings(self) -> MethodEntry:
        from peftplan.harness.space import known_settings

        known = known_settings(self.name)
        places = [("space", self.space), ("fixed", self.fixed)] + [
            (f"enqueue[{i}]", params) for i, params in enumerate(self.enqueue)
        ]
        for where, values in places:
            for key in values:
                if key not in known:
                    close = suggest(key, known)
                    hint = f" Did you mean: {', '.join(close)}?" if close else f" Known: {', '.join(sorted(known))}."
                    raise ValueError(f"{where}.{key}: unknown {self.name} setting {key!r}.{hint}")
        both = set(self.space) & set(self.fixed)
        if both:
            raise ValueError(f"fixed.{sorted(both)[0]}: a setting cannot be both searched and fixed")
        from peftplan.methods import get_method

        method = get_method(self.name)
        config_values = {k: v for k, v in self.fixed.items() if k in method.config_cls.model_fields}
        try:
            method.make_config(**config_values)
        except BadInputError as exc:
            raise ValueError(f"fixed: {exc}") from None
        return self

    @property
    def key(self) -> str:
        return self.label or self.name

    def quant_choices(self) -> list[str]:
        """Every base quantization this entry's trials can use ('none' for an unquantized base)."""
        from peftplan.methods import get_method

        default = getattr(get_method(self.name).make_config(), "quant", "none")
        searched = self.space.get("quant")
        choices = [self.fixed.get("quant", default)] if not isinstance(searched, list) else searched
        return [str(q) for q in [*choices, *(p["quant"] for p in self.enqueue if "quant" in p)]]


class PrunerSection(Section):
    kind: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = Field(
        "median", description="median/percentile: against other trials' eval loss at the same step (after "
        "startup_trials and warmup_steps); successive_halving/hyperband: multi-fidelity rungs at eval_every x "
        "reduction_factor^k steps."
    )
    startup_trials: int = Field(2, ge=0, description="Trials that are never pruned (median, percentile).")
    warmup_steps: int = Field(0, ge=0, description="Steps before a trial may be pruned (median, percentile).")
    percentile: float = Field(25.0, gt=0, lt=100)
    reduction_factor: int | None = Field(
        None, ge=2, le=10, description="successive_halving/hyperband: keep the best 1/reduction_factor at each "
        "rung (default 3)."
    )

    @model_serializer(mode="wrap")
    def _without_unset_additions(self, handler: Any) -> dict[str, Any]:
        """`reduction_factor` is left out while unset, so that suites made before it keep their hash."""
        data: dict[str, Any] = handler(self)
        if data.get("reduction_factor") is None:
            data.pop("reduction_factor", None)
        return data


class ConfirmSection(Section):
    """Confirmation runs: after a method's search, its `top` configurations again with `seeds` new seeds each."""

    top: int = Field(1, ge=1, le=100, description="How many of each method's best configurations to re-run.")
    seeds: int = Field(3, ge=1, le=100, description="Seeds per configuration (mean and sd over them).")


class SearchSection(Section):
    trials: int = Field(3, ge=1, le=100_000, description="Trials per method.")
    sampler: Literal["tpe", "random", "nsga2", "qmc"] = "tpe"
    pruner: PrunerSection = Field(default_factory=PrunerSection)
    objective: Literal["task_metric", "eval_loss"] = "task_metric"
    multi_objective: bool = Field(False, description="(objective, peak memory); Optuna cannot prune these.")
    recipe: bool = Field(True, description="Enqueue the literature recipe (r=16, alpha=32, all-linear, lr 1e-4) first.")
    seed: int = 0
    confirm: ConfirmSection | None = Field(
        None, description="Re-run each method's top configurations with new seeds: {top: k, seeds: n}."
    )

    @model_serializer(mode="wrap")
    def _without_unset_additions(self, handler: Any) -> dict[str, Any]:
        """Settings added after runs were made are left out while unset, so that those runs' suite hash (and
        resuming them) stays valid."""
        data: dict[str, Any] = handler(self)
        if data.get("confirm") is None:
            data.pop("confirm", None)
        return data


class TrainingSection(Section):
    steps: int | None = Field(None, ge=1, description="Optimizer steps (default 100 unless epochs is given).")
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(8, ge=1, le=65536)
    grad_accum: int = Field(1, ge=1, le=4096)
    seq_len: int = Field(256, ge=8, le=1_048_576)
    grad_checkpointing: bool = False
    optimizer: Literal["adamw", "adamw8bit", "sgd"] = "adamw"
    lr: float | None = Field(None, gt=0, lt=10, description="A fixed learning rate; else lr is searched.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int = Field(10, ge=1, description="Steps between intermediate eval losses (for pruning).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Autocast dtype; auto is bf16 where the CPU or GPU supports it."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; default: the cores idle when each trial starts."
    )
    seed: int = 0
    gpus: int = Field(
        1, ge=1, le=64, description="Ranks per trial on this host (one per GPU); above 1, `accelerate launch` starts "
        "them (on a host without CUDA: that many CPU processes on gloo). batch_size is per rank."
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With gpus > 1: ddp (a full replica per rank) or fsdp (FSDP2: weights, gradients and "
        "optimizer states sharded over the ranks)."
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSection:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("steps/epochs: give one, not both")
        if self.steps is None and self.epochs is None:
            self.steps = 100
        return self

    @model_validator(mode="after")
    def _parallel_fits(self) -> TrainingSection:
        if self.parallel == "fsdp" and self.gpus < 2:
            raise ValueError(f"parallel: fsdp shards over several ranks; set gpus: 2 or more (got gpus: {self.gpus})")
        if self.parallel == "fsdp" and self.optimizer == "adamw8bit":
            raise ValueError("optimizer: adamw8bit (bitsandbytes) cannot step FSDP's sharded parameters; use adamw "
                             "or parallel: ddp")
        return self


class ForgettingSection(Section):
    probe: str = Field("self-sampled", description="A text file, or 'self-sampled' (text the base model writes).")
    name: str | None = Field(None, description="How reports call the probe (default: the file name).")
    fallback: Literal["self-sampled", "none"] = Field("self-sampled", description="When the probe file is missing.")
    tokens: int = Field(2048, ge=16, description="Probe tokens scored.")
    window: int = Field(128, ge=8, description="Tokens per scored window.")


class LmEvalSection(Section):
    tasks: list[str] = Field(min_length=1)
    include_path: str | None = Field(None, description="A directory of local lm-eval task YAML files.")
    limit: int | None = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)


class LatencySection(Section):
    prompt_tokens: int = Field(64, ge=1)
    new_tokens: int = Field(16, ge=1)
    repeats: int = Field(2, ge=1)


class EvalSection(Section):
    task_examples: int = Field(128, ge=1, description="Held-out examples scored for the task metric.")
    loss_examples: int = Field(32, ge=1, description="Held-out examples for the intermediate eval loss.")
    max_new_tokens: int = Field(16, ge=1, description="Generation tasks: tokens generated per answer.")
    forgetting: ForgettingSection | None = Field(default_factory=ForgettingSection)
    lm_eval: LmEvalSection | None = None
    latency: LatencySection | None = Field(default_factory=LatencySection)
    keep_adapters: bool = Field(False, description="Keep each trial's saved adapter in the run directory.")


class BudgetSection(Section):
    vram: Bytes = Field(None, description="Memory budget (e.g. 24GiB): a constraint on the measured peak.")
    memory_cap: Bytes = Field(None, description="A hard cap each trial enforces; above it the trial is 'oom'.")
    trial_timeout: Seconds = Field(None, description="Per-trial time limit (e.g. 10m); then 'timeout'.")
    total_time: Seconds = Field(None, description="No new trial starts after this (e.g. 8h).")


class StorageSection(Section):
    url: str | None = Field(None, description="An Optuna RDB URL; default sqlite:///<run dir>/study.db.")
    heartbeat_interval: int = Field(10, ge=1, description="Seconds between a running trial's heartbeats.")
    grace_period: int = Field(30, ge=2, description="Seconds without a heartbeat before a trial is retried.")
    max_retry: int = Field(2, ge=0)

    @field_validator("url")
    @classmethod
    def _rdb_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", value):
            raise ValueError(f"{value!r} is not an Optuna RDB URL (sqlite:///..., postgresql://...)")
        return value

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> StorageSection:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must be longer than heartbeat_interval")
        return self


class Suite(Section):
    """A whole bench suite."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    model: ModelSection = Field(default_factory=ModelSection)
    task: TaskSection
    methods: list[MethodEntry] = Field(
        min_length=1, description="The methods to benchmark, or 'auto': the plan's recommended shortlist."
    )
    search: SearchSection = Field(default_factory=SearchSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    storage: StorageSection = Field(default_factory=StorageSection)

    @model_validator(mode="before")
    @classmethod
    def _auto_methods(cls, data: Any) -> Any:
        """`methods: auto` becomes the plan's shortlist for this model, budget and training (harness/shortlist.py)."""
        if not isinstance(data, dict) or data.get("methods") != "auto":
            return data
        try:
            sections = [section.model_validate(data.get(key) or {}) for key, section in
                        (("model", ModelSection), ("training", TrainingSection), ("budget", BudgetSection))]
        except ValidationError:
            return {**data, "methods": [{"name": "lora"}]}  # a placeholder: the section's own error is reported
        from peftplan.harness.shortlist import auto_methods

        return {**data, "methods": auto_methods(*sections)}  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _unique_labels(self) -> Suite:
        seen: set[str] = set()
        for entry in self.methods:
            if entry.key in seen:
                raise ValueError(f"methods: {entry.key!r} appears twice; give one of them a distinct label")
            seen.add(entry.key)
        return self

    @model_validator(mode="after")
    def _fsdp_needs_unquantized_weights(self) -> Suite:
        if self.training.parallel != "fsdp":
            return self
        for index, entry in enumerate(self.methods):
            if any(q != "none" for q in entry.quant_choices()):
                raise ValueError(f"methods[{index}]: {entry.key} trains on a bitsandbytes-quantized base, which "
                                 "training.parallel: fsdp cannot shard; use parallel: ddp")
        return self

    def trials_for(self, entry: MethodEntry) -> int:
        return entry.trials or self.search.trials


@dataclass(frozen=True)
class LoadedSuite:
    """A validated suite and the directory its relative paths start from."""

    suite: Suite
    source: Path
    base_dir: Path

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def normalized(self) -> dict[str, Any]:
        """The suite with every default filled in: what a run directory stores."""
        return self.suite.model_dump(mode="json")

    @property
    def hash(self) -> str:
        return suite_hash(self.normalized())


def suite_hash(normalized: dict[str, Any]) -> str:
    blob = json.dumps(normalized, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_suite(path: Path) -> LoadedSuite:
    """Read, parse and validate a suite file (schema only; see `check_suite` for files and model).

    Raises:
        BadInputError: unreadable file, bad YAML, or a schema error (one line with the field path).
    """
    import yaml

    if path.is_dir():
        raise BadInputError(f"{path} is a directory; give a suite .yaml file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read suite {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # e.g. thousands of nested brackets
        raise BadInputError(f"{path.name}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BadInputError(f"{path.name}: not valid YAML{where}: {problem}") from None
    return LoadedSuite(parse_suite(data, origin=path.name), path.resolve(), path.resolve().parent)


def parse_suite(data: Any, *, origin: str = "suite") -> Suite:
    """Validate a parsed suite mapping.

    Raises:
        BadInputError: one line naming the field path, with a did-you-mean for unknown keys.
    """
    if not isinstance(data, dict):
        raise BadInputError(f"{origin}: a suite is a mapping of sections (name, model, task, methods, ...)")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise BadInputError(f"{origin}: {describe_error(exc)}") from None


def field_path(loc: tuple[Any, ...]) -> str:
    """('methods', 0, 'space') -> 'methods[0].space'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_error(exc: ValidationError) -> str:
    """The first pydantic error as `path: what is wrong`, with a did-you-mean for unknown keys."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _is_union_tag(p)))
    path = field_path(loc) or "suite"
    if err["type"] == "extra_forbidden":
        known = _fields_at(Suite, loc[:-1])
        close = suggest(str(loc[-1]), known)
        hint = f" Did you mean: {', '.join(close)}?" if close else (f" Known keys: {', '.join(known)}." if known else "")
        return f"{path}: unknown key.{hint}"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{path}: required but missing"
    if err["type"] in ("value_error", "assertion_error"):
        return f"{path}: {message}"
    given = err.get("input")
    shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
    return f"{path}: {message} (got {shown})"


def _is_union_tag(part: str) -> bool:
    # pydantic inserts the union member's name (e.g. 'list[any]', 'RangeSpec') into error locations.
    return part in ("RangeSpec",) or part.startswith(("list[", "dict[", "function-"))


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at `loc` below `model` (empty if not a model)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue  # list index: the item type was already taken from the annotation
        field = current.model_fields.get(str(part))
        current = _model_in(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, str):
        found = globals().get(annotation)
        return found if isinstance(found, type) and issubclass(found, BaseModel) else None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
