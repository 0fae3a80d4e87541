"""Sequence-length distributions: unpacked data peaks at its longest batch and trains at its mean length.

`--lengths FILE` takes either token counts (one integer per line, or a JSON list of integers) or a
dataset (`.jsonl`/`.json` records) whose text field is tokenized with `--tokenizer` to count them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftplan.errors import BadInputError

TEXT_FIELDS = ("text", "content", "prompt", "question", "instruction", "sentence", "sms")


@dataclass(frozen=True)
class Lengths:
    """Token counts of the training examples (before any cap)."""

    count: int
    longest: int
    mean: float
    p99: int
    counts: tuple[int, ...] = ()

    def capped(self, cap: int) -> tuple[int, float]:
        """(longest, mean) once every example is truncated to `cap` tokens."""
        return min(self.longest, cap), statistics.fmean(min(n, cap) for n in self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "longest": self.longest, "mean": round(self.mean, 2), "p99": self.p99}


def lengths_from_counts(counts: list[int]) -> Lengths:
    """Summarise token counts.

    Raises:
        BadInputError: no counts, or a count that is not a positive integer.
    """
    if not counts:
        raise BadInputError("--lengths holds no token counts")
    for value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"--lengths: token counts must be positive integers, got {value!r}")
    ordered = sorted(counts)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Lengths(len(counts), ordered[-1], statistics.fmean(counts), p99, tuple(ordered))


def read_lengths(path: Path, *, tokenizer: str | None = None, field: str | None = None) -> Lengths:
    """Token counts from `path`: integers, or a dataset tokenized with `tokenizer`.

    Raises:
        BadInputError: a missing or unreadable file; a dataset without `--tokenizer`; no text field.
    """
    if not path.is_file():
        raise BadInputError(f"--lengths: no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"--lengths: cannot read {path}: {exc}") from None
    counts = _integer_counts(text)
    if counts is not None:
        return lengths_from_counts(counts)
    records = _records(text, path)
    if tokenizer is None:
        raise BadInputError(f"--lengths {path.name} is a dataset: pass --tokenizer (a local directory or Hub id) "
                            "to count its tokens, or give a file of token counts")
    texts = [_text_of(record, field, path) for record in records]
    return lengths_from_counts(_count_tokens(texts, tokenizer))


def _integer_counts(text: str) -> list[int] | None:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, list) and all(isinstance(v, int) for v in data) else None
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if lines and all(line.lstrip("-").isdigit() for line in lines):
        return [int(line) for line in lines]
    return None


def _records(text: str, path: Path) -> list[Any]:
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            data = json.loads(stripped)
            return data if isinstance(data, list) else [data]
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise BadInputError(f"--lengths: {path.name} is neither token counts nor JSON lines ({exc.msg}, "
                            f"line {exc.lineno})") from None


def _text_of(record: Any, field: str | None, path: Path) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise BadInputError(f"--lengths: {path.name} records must be objects or strings")
    if field is not None:
        if field not in record:
            from peftplan.errors import UnknownNameError

            raise UnknownNameError("--lengths-field", field, list(record))
        return str(record[field])
    if "messages" in record and isinstance(record["messages"], list):  # chat format: all turns
        return "\n".join(str(m.get("content", "")) for m in record["messages"] if isinstance(m, dict))
    parts = [str(record[k]) for k in record if isinstance(record[k], str)]
    if not parts:
        raise BadInputError(f"--lengths: no text field in {path.name}; name one with --lengths-field")
    return "\n".join(parts)  # prompt and answer train together


def _count_tokens(texts: list[str], tokenizer: str) -> list[int]:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"--tokenizer {tokenizer!r} could not be loaded ({type(exc).__name__}); give a local "
                            "tokenizer directory") from None
    return [max(1, len(ids)) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
