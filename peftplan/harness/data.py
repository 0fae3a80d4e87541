"""Task data: read records (local jsonl/json/csv/tsv, a Hub dataset, or a generated task), render them
through the suite's templates into examples, and split them with a seed.

An `Example` is what every task kind trains and scores on: a prompt, the target text appended to it,
and for classification and multiple choice the candidate continuations with the index of the right one.
Examples are written to `<run>/data/*.jsonl` once per run, so every trial sees exactly the same split.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftplan.errors import BadInputError, suggest
from peftplan.harness.generated import DEFINITIONS, generate_records

if TYPE_CHECKING:
    from peftplan.harness.suite import LoadedSuite, SourceSection, TaskSection


@dataclass
class Example:
    """One rendered example."""

    prompt: str
    target: str
    choices: list[str] | None = None  # classification and multiple choice
    answer: int | str | None = None  # index into choices, or the expected extracted answer (generation)


@dataclass
class TaskInfo:
    """What the run's task turned out to be (which source, fallback or not), for result files and reports."""

    name: str
    kind: str
    source: str
    used_fallback: bool
    chat_template: bool
    system_prompt: str | None
    answer_regex: str
    n_train: int
    n_eval: int
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedTask:
    info: TaskInfo
    train: list[Example]
    eval: list[Example]


class _Fields(dict):  # type: ignore[type-arg]
    """A record as a template mapping: a missing field fails with the known fields and a did-you-mean."""

    def __init__(self, record: dict[str, Any], where: str) -> None:
        super().__init__({k: v.strip() if isinstance(v, str) else v for k, v in record.items()})
        self.where = where

    def __missing__(self, key: str) -> Any:
        close = suggest(key, self.keys())
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BadInputError(
            f"{self.where}: field {key!r} is not in the data (fields: {', '.join(map(str, self.keys()))}).{hint}"
        )


def render(template: str, record: dict[str, Any], where: str) -> str:
    try:
        return template.format_map(_Fields(record, where))
    except (ValueError, IndexError, AttributeError) as exc:
        raise BadInputError(f"{where}: bad template {template!r}: {exc}") from None


def read_records(source: SourceSection, loaded: LoadedSuite, *, seed: int, where: str) -> list[dict[str, Any]]:
    """The raw records of one source.

    Raises:
        BadInputError: a missing or malformed file, or an unreachable dataset.
    """
    if source.generated is not None:
        return generate_records(source.generated, source.size, seed)
    if source.hf is not None:
        return _read_hub(source, where)
    assert source.path is not None
    path = loaded.resolve_path(source.path)
    if not path.is_file():
        raise BadInputError(f"{where}.path: no such file: {path}")
    fmt = source.format if source.format != "auto" else _format_of(path, where)
    try:
        if fmt == "jsonl":
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif fmt == "json":
            data = json.loads(path.read_text())
            records = data.get("data", data) if isinstance(data, dict) else data
        else:
            records = _read_delimited(path, "\t" if fmt == "tsv" else ",", source.columns)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{where}.path: cannot parse {path.name} as {fmt}: {exc}") from None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise BadInputError(f"{where}.path: {path.name} holds no records (objects/rows)")
    return records


def _format_of(path: Path, where: str) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "csv", "tsv"):
        return suffix
    raise BadInputError(f"{where}.format: cannot tell the format of {path.name}; set format: jsonl|json|csv|tsv")


def _read_delimited(path: Path, delimiter: str, columns: list[str] | None) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        # TSV files (SST-2, SMS spam) are not quoted: quote characters are part of the text.
        if delimiter == "\t":
            rows = list(csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE))
        else:
            rows = list(csv.reader(handle, delimiter=delimiter))
    if columns is None:
        header, rows = rows[0], rows[1:]
    else:
        header = columns
    return [dict(zip(header, row, strict=False)) for row in rows if row]


def _read_hub(source: SourceSection, where: str) -> list[dict[str, Any]]:
    import os

    if os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true") and os.environ.get(
        "PEFTPLAN_ALLOW_HUB", ""
    ) != "1":
        raise BadInputError(f"{where}.hf: {source.hf!r} is a Hub dataset and HF_DATASETS_OFFLINE is set")
    try:
        from datasets import load_dataset

        dataset = load_dataset(source.hf, source.hf_config, split=source.split)
    except Exception as exc:  # network, missing dataset or split: all mean "cannot load"
        raise BadInputError(f"{where}.hf: cannot load {source.hf!r} ({type(exc).__name__}: {exc})") from None
    return [dict(row) for row in dataset]


def effective_task(task: TaskSection) -> dict[str, Any]:
    """The task's templates, with a generated task's own definition under any suite overrides."""
    values = task.model_dump(exclude={"fallback", "train", "eval"})
    if task.train.generated is not None:
        base = DEFINITIONS[task.train.generated]
        values = {**values, **{k: v for k, v in base.items() if values.get(k) is None}}
    return values


def render_examples(records: list[dict[str, Any]], task: dict[str, Any], where: str) -> list[Example]:
    """Records -> examples of the task's kind."""
    kind, prompt, target = str(task["kind"]), str(task["prompt"]), str(task.get("target"))
    examples = []
    regex = re.compile(task["answer_regex"])
    for record in records:
        text = render(prompt, record, f"{where}.prompt")
        if kind == "classification":
            value = render(target, record, f"{where}.target")
            labels = task["labels"]
            if value not in labels:
                raise BadInputError(
                    f"{where}.labels: value {value!r} in the data has no label word (labels: {', '.join(labels)})"
                )
            words = list(labels.values())
            examples.append(Example(text, labels[value], words, list(labels).index(value)))
        elif kind == "generation":
            answer = render(target, record, f"{where}.target")
            examples.append(Example(text, answer, None, extract_answer(answer, regex)))
        else:
            choices = _choices(task["choices"], record, where)
            raw = render(task["answer"], record, f"{where}.answer")
            try:
                index = int(raw)
            except ValueError:
                raise BadInputError(f"{where}.answer: {raw!r} is not a choice index") from None
            if not 0 <= index < len(choices):
                raise BadInputError(f"{where}.answer: index {index} outside {len(choices)} choices")
            examples.append(Example(text, choices[index], choices, index))
    return examples


def _choices(spec: str | list[str], record: dict[str, Any], where: str) -> list[str]:
    if isinstance(spec, list):
        return [render(t, record, f"{where}.choices") for t in spec]
    match = re.fullmatch(r"\{(\w+)\}", spec.strip())
    value = _Fields(record, f"{where}.choices")[match.group(1)] if match else None
    if not isinstance(value, list) or not value:
        raise BadInputError(f"{where}.choices: {spec!r} must name a field holding a list, or be a list of templates")
    return [str(v).strip() for v in value]


def extract_answer(text: str, regex: re.Pattern[str]) -> str | None:
    """The compared part of a generated or reference answer (group 1 of the regex), normalised."""
    match = regex.search(text)
    if match is None:
        return None
    found = match.group(1) if match.groups() else match.group(0)
    return found.replace(",", "").strip()


def prepare_task(loaded: LoadedSuite) -> PreparedTask:
    """Read, render and split the suite's task, falling back to `task.fallback` when a file is missing.

    Raises:
        BadInputError: missing files without a fallback, template errors, too little data.
    """
    task = loaded.suite.task
    missing = missing_files(task, loaded)
    if missing and task.fallback is not None:
        prepared = _prepare(task.fallback, loaded, "task.fallback")
        prepared.info.used_fallback = True
        prepared.info.notes.append(f"{missing[0]} is missing; used the fallback task")
        return prepared
    return _prepare(task, loaded, "task")


def missing_files(task: TaskSection, loaded: LoadedSuite) -> list[str]:
    sources = [task.train] + ([task.eval] if task.eval is not None else [])
    return [str(loaded.resolve_path(s.path)) for s in sources if s.path is not None and not loaded.resolve_path(s.path).is_file()]


def _prepare(task: TaskSection, loaded: LoadedSuite, where: str) -> PreparedTask:
    values = effective_task(task)
    rng = random.Random(task.seed)
    train_records = read_records(task.train, loaded, seed=task.seed, where=f"{where}.train")
    if task.eval is not None:
        eval_records = read_records(task.eval, loaded, seed=task.seed + 1, where=f"{where}.eval")
        rng.shuffle(eval_records)
        rng.shuffle(train_records)
    else:
        rng.shuffle(train_records)
        if len(train_records) <= task.holdout:
            raise BadInputError(
                f"{where}.holdout: {task.holdout} held-out examples leave none of {len(train_records)} to train on"
            )
        eval_records, train_records = train_records[: task.holdout], train_records[task.holdout :]
    if task.max_train is not None:
        train_records = train_records[: task.max_train]
    train = render_examples(train_records, values, where)
    evaluation = render_examples(eval_records, values, where)
    source = task.train.generated and f"generated:{task.train.generated}" or task.train.hf or str(task.train.path)
    info = TaskInfo(
        name=values.get("name") or Path(str(task.train.path or task.train.hf or "task")).stem,
        kind=values["kind"],
        source=source,
        used_fallback=False,
        chat_template=task.chat_template,
        system_prompt=task.system_prompt,
        answer_regex=values["answer_regex"],
        n_train=len(train),
        n_eval=len(evaluation),
    )
    return PreparedTask(info, train, evaluation)


def write_examples(examples: list[Example], path: Path) -> None:
    from peftplan.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(asdict(example)) + "\n" for example in examples))


def read_examples(path: Path) -> list[Example]:
    return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def write_task(prepared: PreparedTask, directory: Path) -> None:
    """Store the run's examples and what they are (`data/train.jsonl`, `data/eval.jsonl`, `data/task.json`)."""
    write_examples(prepared.train, directory / "train.jsonl")
    write_examples(prepared.eval, directory / "eval.jsonl")
    (directory / "task.json").write_text(json.dumps(asdict(prepared.info), indent=2))


def read_task(directory: Path) -> PreparedTask:
    info = TaskInfo(**json.loads((directory / "task.json").read_text()))
    return PreparedTask(info, read_examples(directory / "train.jsonl"), read_examples(directory / "eval.jsonl"))
