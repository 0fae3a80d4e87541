"""Turn examples into token batches, and score a model on a task.

The target is appended to the prompt; a space separates them unless the prompt ends in whitespace or
the chat template is on (then the target is the assistant's reply). Only target tokens carry a loss.

Scoring by kind:
- classification: the label word with the highest log-likelihood after the prompt (accuracy, macro-F1);
- multiple choice: the choice with the highest mean per-token log-likelihood (accuracy);
- generation: greedy decoding, then exact match of the regex's group 1 (exact_match).

Each metric comes with its 95% bootstrap interval over the scored examples (`harness/stats.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftplan.harness.data import Example, TaskInfo, extract_answer
from peftplan.harness.stats import mean_ci

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


class PromptFormatter:
    """Renders prompts (optionally through the chat template) and encodes prompt + target."""

    def __init__(self, tokenizer: Any, info: TaskInfo, seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.chat = info.chat_template
        self.system = info.system_prompt
        self.seq_len = seq_len
        if self.chat and not getattr(tokenizer, "chat_template", None):
            from peftplan.errors import BadInputError

            raise BadInputError("task.chat_template: this tokenizer has no chat template")

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": prompt}
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if self.system:
            prompt = f"{self.system}\n{prompt}"
        return list(self.tokenizer(prompt).input_ids)

    def continuation_ids(self, prompt: str, continuation: str) -> list[int]:
        separator = "" if self.chat or prompt[-1:].isspace() or continuation[:1].isspace() else " "
        return list(self.tokenizer(separator + continuation, add_special_tokens=False).input_ids)

    def encode(self, example: Example, *, with_eos: bool) -> Encoded:
        """Prompt + target ids, labels only on the target; the prompt is cut from the left to fit seq_len."""
        target = self.continuation_ids(example.prompt, example.target)
        if with_eos and self.tokenizer.eos_token_id is not None:
            target = target + [self.tokenizer.eos_token_id]
        target = target[: self.seq_len - 1]
        prompt = self.prompt_ids(example.prompt)[-(self.seq_len - len(target)) :]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target)


def collate(items: Sequence[Encoded], pad_id: int, *, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest item: input_ids, attention_mask and labels tensors."""
    import torch

    width = max(len(item.input_ids) for item in items)
    ids, mask, labels = [], [], []
    for item in items:
        pad = width - len(item.input_ids)
        if left:
            ids.append([pad_id] * pad + item.input_ids)
            mask.append([0] * pad + [1] * len(item.input_ids))
            labels.append([IGNORE] * pad + item.labels)
        else:
            ids.append(item.input_ids + [pad_id] * pad)
            mask.append([1] * len(item.input_ids) + [0] * pad)
            labels.append(item.labels + [IGNORE] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def pad_id(tokenizer: Any) -> int:
    value = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(value or 0)


def batches_forever(items: Sequence[Encoded], batch_size: int, seed: int) -> Iterator[list[Encoded]]:
    """Seeded shuffled passes over `items`, `batch_size` at a time (the last short batch is dropped)."""
    import random

    rng = random.Random(seed)
    order = list(range(len(items)))
    size = min(batch_size, len(items))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            yield [items[i] for i in order[start : start + size]]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sequence_logprobs(
    model: nn.Module, items: Sequence[Encoded], pad: int, batch_size: int, device: str
) -> list[tuple[float, int]]:
    """For each item: (sum of log-probabilities of its labelled tokens, how many there are)."""
    import torch

    results: list[tuple[float, int]] = []
    for group in chunks(items, batch_size):
        batch = {k: v.to(device) for k, v in collate(group, pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"]
        # A prompt-tuned model returns logits for its virtual tokens too: keep the last positions.
        logits = logits[:, -labels.shape[1] :, :]
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = labels[:, 1:]
        mask = targets != IGNORE
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        for total, count in zip(picked.sum(-1).tolist(), mask.sum(-1).tolist(), strict=True):
            results.append((float(total), int(count)))
    return results


def single_token_logprobs(
    model: nn.Module, examples: Sequence[Example], candidates: Sequence[Encoded], pad: int, batch_size: int,
    device: str,
) -> list[tuple[float, int]]:
    """`sequence_logprobs` when every choice is one token: one forward per prompt scores all its choices."""
    import torch

    prompts, choice_ids, position = [], [], 0
    for example in examples:
        group = candidates[position : position + len(example.choices or [])]
        position += len(group)
        prompts.append(Encoded(group[0].input_ids[:-1], [IGNORE] * (len(group[0].input_ids) - 1)))
        choice_ids.append([c.input_ids[-1] for c in group])
    results: list[tuple[float, int]] = []
    for start in range(0, len(prompts), batch_size):
        group_prompts = prompts[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(group_prompts, pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logits = logits[:, -batch["input_ids"].shape[1] :, :]  # drop virtual-token positions (prompt tuning)
        last = batch["attention_mask"].sum(-1) - 1  # right padding: the last real position of each row
        logprobs = torch.log_softmax(logits[torch.arange(len(group_prompts)), last], dim=-1)
        for row, ids in zip(logprobs, choice_ids[start : start + batch_size], strict=True):
            results.extend((float(row[i]), 1) for i in ids)
    return results


@dataclass
class TaskScore:
    name: str  # the headline metric: accuracy or exact_match
    value: float
    all: dict[str, float]
    examples: int
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> 95% bootstrap [low, high]

    @property
    def interval(self) -> list[float] | None:
        """The headline metric's interval."""
        return self.intervals.get(self.name)


def score_task(
    model: nn.Module,
    formatter: PromptFormatter,
    examples: Sequence[Example],
    info: TaskInfo,
    *,
    device: str,
    batch_size: int,
    max_new_tokens: int,
) -> TaskScore:
    """The task metric on `examples` (call under no_grad / eval mode)."""
    if info.kind == "generation":
        return _score_generation(model, formatter, examples, re.compile(info.answer_regex), device, batch_size,
                                 max_new_tokens)
    pad = pad_id(formatter.tokenizer)
    candidates: list[Encoded] = []
    for example in examples:
        assert example.choices is not None
        for choice in example.choices:
            candidates.append(formatter.encode(Example(example.prompt, choice), with_eos=False))
    if all(sum(label != IGNORE for label in c.labels) == 1 for c in candidates):
        scores = single_token_logprobs(model, examples, candidates, pad, batch_size, device)
    else:
        scores = sequence_logprobs(model, candidates, pad, batch_size, device)
    predictions, golds, position = [], [], 0
    for example in examples:
        assert example.choices is not None
        group = scores[position : position + len(example.choices)]
        position += len(example.choices)
        per_choice = [total / max(count, 1) if info.kind == "multiple_choice" else total for total, count in group]
        predictions.append(max(range(len(per_choice)), key=per_choice.__getitem__))
        golds.append(int(example.answer))  # type: ignore[arg-type]
    correct = [int(p == g) for p, g in zip(predictions, golds, strict=True)]
    accuracy = sum(correct) / len(golds)
    metrics = {"accuracy": accuracy}
    intervals = _intervals({"accuracy": mean_ci(correct)})
    if info.kind == "classification":
        classes = len(examples[0].choices or [])
        metrics["macro_f1"] = macro_f1(predictions, golds, classes)
        intervals |= _intervals({"macro_f1": macro_f1_ci(predictions, golds, classes)})
    return TaskScore("accuracy", accuracy, metrics, len(examples), intervals)


def _intervals(found: dict[str, list[float] | None]) -> dict[str, list[float]]:
    return {name: interval for name, interval in found.items() if interval is not None}


def macro_f1_ci(predictions: Sequence[int], golds: Sequence[int], classes: int) -> list[float] | None:
    """Bootstrap interval of macro-F1 over the examples (`stats.bootstrap`)."""
    import numpy as np

    from peftplan.harness.stats import bootstrap

    pred, gold = np.asarray(predictions), np.asarray(golds)

    def statistic(idx: np.ndarray) -> np.ndarray:
        p, g = pred[idx], gold[idx]
        scores = []
        for label in range(classes):
            tp = ((p == label) & (g == label)).sum(axis=1)
            wrong = ((p == label) != (g == label)).sum(axis=1)  # false positives + false negatives
            scores.append(np.where(tp == 0, 0.0, 2 * tp / np.maximum(2 * tp + wrong, 1)))
        return np.mean(scores, axis=0) if scores else np.zeros(len(idx))

    return bootstrap(statistic, len(pred))


def macro_f1(predictions: Sequence[int], golds: Sequence[int], classes: int) -> float:
    scores = []
    for label in range(classes):
        tp = sum(p == label and g == label for p, g in zip(predictions, golds, strict=True))
        fp = sum(p == label and g != label for p, g in zip(predictions, golds, strict=True))
        fn = sum(p != label and g == label for p, g in zip(predictions, golds, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(classes, 1)


def _score_generation(model: nn.Module, formatter: PromptFormatter, examples: Sequence[Example], regex: re.Pattern[str],
                      device: str, batch_size: int, max_new_tokens: int) -> TaskScore:
    """Exact match of the answer `regex` finds in each greedy generation's first line."""
    tokenizer = formatter.tokenizer
    pad = pad_id(tokenizer)
    correct: list[int] = []
    for group in chunks(examples, batch_size):
        prompts = [formatter.prompt_ids(e.prompt)[-formatter.seq_len :] for e in group]
        batch = collate([Encoded(p, [IGNORE] * len(p)) for p in prompts], pad, left=True)
        output = model.generate(  # type: ignore[operator]
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :] if _returns_prompt(output, batch) else output
        for example, tokens in zip(group, new_tokens, strict=True):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            first_line = text.strip().split("\n")[0]
            predicted = extract_answer(first_line, regex)
            correct.append(int(predicted is not None and predicted == example.answer))
    exact = sum(correct) / len(examples)
    return TaskScore("exact_match", exact, {"exact_match": exact}, len(examples),
                     _intervals({"exact_match": mean_ci(correct)}))


def _returns_prompt(output: Any, batch: dict[str, Any]) -> bool:
    """Whether `generate` echoed the prompt (decoder-only models do; prompt tuning keeps that too)."""
    width = batch["input_ids"].shape[1]
    return bool(output.shape[1] >= width and (output[:, :width].cpu() == batch["input_ids"]).all())
