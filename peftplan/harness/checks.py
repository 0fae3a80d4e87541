"""Checks of a suite beyond its schema: files exist, templates fit the data, the model resolves, and every
method setting (targets included) applies to the model. `peftplan validate` runs them without training.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError, PeftplanError
from peftplan.harness.suite import field_path

if TYPE_CHECKING:
    from peftplan.harness.suite import LoadedSuite, MethodEntry, TrainingSection
    from peftplan.models.spec import ModelSpec


def check_suite(loaded: LoadedSuite, *, check_data: bool = True) -> list[str]:
    """Raise `BadInputError` (one line, with the field path) on the first problem; return notes."""
    notes: list[str] = []
    notes += _check_task(loaded, check_data)
    notes += _check_eval_files(loaded)
    spec = _check_model(loaded)
    for index, entry in enumerate(loaded.suite.methods):
        _check_method(spec, entry, index)
    return notes


def _check_task(loaded: LoadedSuite, check_data: bool) -> list[str]:
    from peftplan.harness.data import missing_files, prepare_task

    task = loaded.suite.task
    missing = missing_files(task, loaded)
    notes = []
    if missing:
        if task.fallback is None:
            where = "task.train.path" if task.train.path and str(loaded.resolve_path(task.train.path)) == missing[0] \
                else "task.eval.path"
            raise BadInputError(f"{where}: no such file: {missing[0]}")
        if missing_files(task.fallback, loaded):
            raise BadInputError(f"task.fallback: no such file: {missing_files(task.fallback, loaded)[0]}")
        notes.append(f"task: {missing[0]} is missing; the fallback task will be used")
    if task.train.hf is not None:
        notes.append(f"task: the Hub dataset {task.train.hf!r} is not checked offline")
    elif check_data:
        prepared = prepare_task(loaded)  # renders every example: template and label errors surface here
        check_rank_shares(loaded.suite.training, prepared.info.n_train)
        notes.append(f"task: {prepared.info.name} ({prepared.info.kind}), {prepared.info.n_train} train / "
                     f"{prepared.info.n_eval} eval examples")
    return notes


def _check_eval_files(loaded: LoadedSuite) -> list[str]:
    section = loaded.suite.eval
    notes = []
    if section.forgetting is not None and section.forgetting.probe != "self-sampled":
        path = loaded.resolve_path(section.forgetting.probe)
        if not path.is_file():
            if section.forgetting.fallback == "none":
                raise BadInputError(f"eval.forgetting.probe: no such file: {path}")
            notes.append(f"eval.forgetting: {path} is missing; the probe falls back to self-sampled text")
    if section.lm_eval is not None and section.lm_eval.include_path is not None:
        path = loaded.resolve_path(section.lm_eval.include_path)
        if not path.is_dir():
            raise BadInputError(f"eval.lm_eval.include_path: no such directory: {path}")
    return notes


def _check_model(loaded: LoadedSuite) -> ModelSpec:
    from peftplan.harness.embedded import gguf_path, is_embedded
    from peftplan.harness.loading import model_config
    from peftplan.models import spec_from_config

    section = loaded.suite.model
    try:
        if is_embedded(section.id) and section.config is None and not section.random_init:
            gguf_path()  # the wheel must be there; the conversion itself happens on the first bench
        elif section.config is None and not section.random_init:
            local = loaded.resolve_path(section.id)
            if local.is_dir() and not any(local.glob("*.safetensors")):
                raise BadInputError(f"{local} has no .safetensors weights (pickle checkpoints are refused)")
        if section.tokenizer not in (None, "bytes") and not loaded.resolve_path(section.tokenizer).is_dir():
            raise BadInputError(f"model.tokenizer: no such directory: {loaded.resolve_path(section.tokenizer)}")
        config = model_config(section, loaded)
        return spec_from_config(config, model_id=section.id, trust_remote_code=section.trust_remote_code)
    except PeftplanError as exc:
        message = str(exc)
        raise BadInputError(message if message.startswith("model.") else f"model.id: {message}") from None


def _check_method(spec: ModelSpec, entry: MethodEntry, index: int) -> None:
    """Fixed settings, and every searched target choice, must apply to the model."""
    from peftplan.methods import get_method

    method = get_method(entry.name)
    fields = method.config_cls.model_fields
    fixed = {k: v for k, v in entry.fixed.items() if k in fields}
    _apply_check(method, spec, fixed, field_path(("methods", index, "fixed")))
    for name, choices in entry.space.items():
        if name in fields and isinstance(choices, list):
            for choice in choices:
                _apply_check(method, spec, {**fixed, name: choice}, field_path(("methods", index, "space", name)))


def _apply_check(method: Any, spec: ModelSpec, values: dict[str, Any], where: str) -> None:
    try:
        method.check(spec, method.make_config(**values))
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc}") from None


def check_gpus(training: TrainingSection) -> None:
    """Multi-GPU trials need Linux and that many CUDA devices on the host that runs them (`bench`, `worker`).

    A host without CUDA runs `training.gpus` CPU processes on gloo instead (the path tested here).

    Raises:
        BadInputError: not Linux, more ranks than CUDA devices, or `device: cuda` on a host without one.
    """
    if training.gpus == 1:
        return
    if not sys.platform.startswith("linux"):
        # Rank 0 reopens the runner's pipe through /proc/<pid>/fd, and every rank dies with its parent through
        # prctl(PR_SET_PDEATHSIG): both are Linux's.
        raise BadInputError(f"training.gpus: {training.gpus} ranks per trial need Linux; this host runs "
                            f"{sys.platform} (use gpus: 1)")
    if training.device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        if training.device == "cuda":
            raise BadInputError(f"training.device: cuda, but this host has no CUDA device for its {training.gpus} "
                                "ranks; use device: auto or cpu to run them as CPU processes")
        return
    count = torch.cuda.device_count()
    if training.gpus > count:
        raise BadInputError(f"training.gpus: {training.gpus} ranks asked for, but this host has {count} CUDA "
                            f"device(s); lower training.gpus (or run on a host with {training.gpus})")


def check_rank_shares(training: TrainingSection, n_train: int) -> None:
    """Every rank of a multi-GPU trial needs a full batch of its own training examples (every N-th).

    Raises:
        BadInputError: fewer training examples than `gpus x batch_size`.
    """
    needed = training.gpus * training.batch_size
    if training.gpus > 1 and n_train < needed:
        raise BadInputError(f"training.gpus: {training.gpus} ranks x batch_size {training.batch_size} need "
                            f"{needed} training examples, the task has {n_train}; lower gpus or batch_size, or "
                            "give the task more examples")
