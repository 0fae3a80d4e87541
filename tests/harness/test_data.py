"""Task data: file formats, templates, the three kinds, seeded splits, fallback, and the real shared sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftplan.errors import BadInputError
from peftplan.harness.data import TaskInfo, prepare_task
from peftplan.harness.suite import LoadedSuite, parse_suite
from tests.harness.tiny import TINY_SUITE, deep_update


def loaded(task: dict, base: Path) -> LoadedSuite:
    suite = parse_suite(deep_update({k: v for k, v in TINY_SUITE.items() if k != "task"}, {"task": task}))
    return LoadedSuite(suite, base / "suite.yaml", base)


def test_generation_from_jsonl_extracts_the_final_number(tmp_path: Path) -> None:
    rows = [{"question": f"What is {i}+{i}?", "answer": f"{i} plus {i} is <<{i}+{i}={2 * i}>>.\n#### {2 * i:,}"}
            for i in range(600, 640)]
    (tmp_path / "math.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = prepare_task(loaded({"kind": "generation", "train": {"path": "math.jsonl"}, "holdout": 10,
                                "prompt": "Q: {question}\nA:", "target": "{answer}",
                                "answer_regex": r"####\s*(-?[\d,]+)"}, tmp_path))
    assert (task.info.n_train, task.info.n_eval) == (30, 10)
    example = task.eval[0]
    assert example.prompt.startswith("Q: What is") and example.answer == str(2 * int(example.prompt.split()[3][:3]))


def test_headerless_tsv_with_label_words_and_quotes(tmp_path: Path) -> None:
    lines = [f'{"spam" if i % 3 == 0 else "ham"}\tmessage "{i}" here' for i in range(50)]
    (tmp_path / "sms.tsv").write_text("\n".join(lines) + "\n")
    task = prepare_task(loaded({"kind": "classification", "train": {"path": "sms.tsv", "columns": ["label", "text"]},
                                "holdout": 10, "prompt": "SMS: {text}\nSpam or ham?", "target": "{label}",
                                "labels": {"ham": "ham", "spam": "spam"}}, tmp_path))
    example = task.train[0]
    assert example.choices == ["ham", "spam"] and example.target == example.choices[example.answer]
    assert '"' in example.prompt  # TSV is read unquoted


def test_csv_multiple_choice_and_seeded_split(tmp_path: Path) -> None:
    rows = [{"ctx": f"c{i}", "endings": [f"a{i}", f"b{i}", f"c{i}"], "label": i % 3} for i in range(40)]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"kind": "multiple_choice", "train": {"path": "mc.jsonl"}, "holdout": 8, "prompt": "{ctx}",
            "choices": "{endings}", "answer": "{label}", "seed": 3}
    first, again = prepare_task(loaded(spec, tmp_path)), prepare_task(loaded(spec, tmp_path))
    assert [e.prompt for e in first.eval] == [e.prompt for e in again.eval]
    assert not {e.prompt for e in first.eval} & {e.prompt for e in first.train}
    other = prepare_task(loaded({**spec, "seed": 4}, tmp_path))
    assert [e.prompt for e in other.eval] != [e.prompt for e in first.eval]
    assert first.train[0].target == first.train[0].choices[first.train[0].answer]


def test_template_field_typo_has_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("sentence,label\n" + "\n".join(f"s{i},{i % 2}" for i in range(20)))
    with pytest.raises(BadInputError, match=r"task.prompt: field 'sentense' is not in the data .* Did you mean: sentence"):
        prepare_task(loaded({"kind": "classification", "train": {"path": "d.csv"}, "holdout": 4,
                             "prompt": "{sentense}", "target": "{label}", "labels": {"0": "no", "1": "yes"}}, tmp_path))
    with pytest.raises(BadInputError, match="value '1' in the data has no label word"):
        prepare_task(loaded({"kind": "classification", "train": {"path": "d.csv"}, "holdout": 4,
                             "prompt": "{sentence}", "target": "{label}", "labels": {"0": "no"}}, tmp_path))


def test_fallback_is_used_and_recorded_when_the_file_is_missing(tmp_path: Path) -> None:
    task = prepare_task(loaded({"kind": "classification", "train": {"path": "absent.tsv"}, "prompt": "{x}",
                                "target": "{y}", "labels": {"a": "a"},
                                "fallback": {"train": {"generated": "parity", "size": 100}, "holdout": 20}}, tmp_path))
    assert task.info.used_fallback and task.info.name == "parity (generated)"
    assert "absent.tsv is missing" in task.info.notes[0]


def test_prompt_formatter_labels_only_the_target_and_uses_the_chat_template() -> None:
    from peftplan.harness.data import Example
    from peftplan.harness.loading import byte_tokenizer
    from peftplan.harness.tasks import IGNORE, PromptFormatter

    tokenizer = byte_tokenizer()
    info = TaskInfo("t", "classification", "x", False, False, None, r"(\d+)", 1, 1)
    encoded = PromptFormatter(tokenizer, info, 64).encode(Example("Is 3 odd?", "yes"), with_eos=False)
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(labelled) == " yes"
    info.chat_template = True
    chat = PromptFormatter(tokenizer, info, 64)
    assert tokenizer.decode(chat.prompt_ids("hi")) == "<user>hi\n<assistant>"
    encoded = chat.encode(Example("hi", "yes"), with_eos=True)
    assert encoded.labels[-1] == tokenizer.eos_token_id and len(encoded.input_ids) <= 64
    long = PromptFormatter(tokenizer, info, 16).encode(Example("x" * 100, "yes"), with_eos=False)
    assert len(long.input_ids) == 16 and tokenizer.decode([t for t, lab in zip(long.input_ids, long.labels,
                                                                                 strict=True) if lab != IGNORE]) == "yes"


def test_real_sst2_and_sms_spam(shared_dir: Path) -> None:
    data = shared_dir / "data"
    sst2 = prepare_task(loaded({"kind": "classification", "train": {"path": str(data / "sst2/train.tsv")},
                                "eval": {"path": str(data / "sst2/dev.tsv")}, "max_train": 500,
                                "prompt": "Review: {sentence}\nSentiment:", "target": "{label}",
                                "labels": {"0": "negative", "1": "positive"}}, shared_dir))
    assert (sst2.info.n_train, sst2.info.n_eval) == (500, 872)
    assert not sst2.train[0].prompt.endswith(" \nSentiment:")  # GLUE's trailing space is stripped
    sms = prepare_task(loaded({"kind": "classification", "holdout": 500,
                               "train": {"path": str(data / "sms_spam/SMSSpamCollection.tsv"), "columns": ["label", "text"]},
                               "prompt": "{text}", "target": "{label}", "labels": {"ham": "ham", "spam": "spam"}},
                              shared_dir))
    assert sms.info.n_train + sms.info.n_eval == 5574


def test_generated_tasks_are_deterministic_and_wordgroups_splits_by_word(tmp_path: Path) -> None:
    from peftplan.harness.generated import generate_records

    assert generate_records("parity", 50, 1) == generate_records("parity", 50, 1) != generate_records("parity", 50, 2)
    task = prepare_task(loaded({"train": {"generated": "wordgroups"}, "holdout": 40}, tmp_path))
    assert (task.info.n_train, task.info.n_eval) == (114, 40)
    assert not {e.prompt for e in task.eval} & {e.prompt for e in task.train}
    assert {e.target for e in task.train} == {"red", "blue"}
    addition = prepare_task(loaded({"train": {"generated": "addition", "size": 30}, "holdout": 5}, tmp_path))
    assert addition.info.kind == "generation" and addition.eval[0].answer == addition.eval[0].target


def test_idle_cores_is_within_the_usable_cores() -> None:
    from peftplan.harness.cpu import idle_cores, usable_cores

    assert 1 <= idle_cores(0.05) <= usable_cores()


def test_single_token_scoring_equals_full_sequence_scoring() -> None:
    import torch

    from peftplan.harness.data import Example
    from peftplan.harness.loading import byte_tokenizer
    from peftplan.harness.tasks import PromptFormatter, sequence_logprobs, single_token_logprobs
    from peftplan.models.build import build_model
    from tests.harness.tiny import TINY_MODEL

    torch.manual_seed(0)
    model = build_model(TINY_MODEL, device="cpu", dtype=torch.float32).eval()
    tokenizer = byte_tokenizer()
    formatter = PromptFormatter(tokenizer, TaskInfo("t", "classification", "", False, False, None, "", 0, 0), 64)
    examples = [Example("Is it?" + "x" * i + " ", "a", ["a", "b"], 0) for i in range(5)]  # one byte each
    candidates = [formatter.encode(Example(e.prompt, c), with_eos=False) for e in examples for c in e.choices]
    with torch.no_grad():
        fast = single_token_logprobs(model, examples, candidates, 0, 3, "cpu")
        slow = sequence_logprobs(model, candidates, 0, 3, "cpu")
    assert [c for _, c in fast] == [c for _, c in slow] == [1] * 10
    assert [round(v, 4) for v, _ in fast] == [round(v, 4) for v, _ in slow]
