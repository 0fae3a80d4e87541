"""Bad suites exit 2 with one line naming the field path, plus a did-you-mean where a name is close."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftplan.cli import main
from tests.harness.tiny import write_suite


def validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"trainig": {"steps": 3}}, "trainig: unknown key. Did you mean: training?"),
        ({"training": {"stesp": 3}}, "training.stesp: unknown key. Did you mean: steps?"),
        ({"methods": [{"name": "lora", "spcae": {}}]}, "methods[0].spcae: unknown key. Did you mean: space?"),
        ({"training": {"steps": "ten"}}, "training.steps: Input should be a valid integer"),
        ({"training": {"batch_size": 0}}, "training.batch_size: Input should be greater than or equal to 1"),
        ({"budget": {"vram": "lots"}}, "budget.vram: expected a size such as 24GiB"),
        ({"methods": [{"name": "lroa"}]}, "methods[0].name: Unknown method 'lroa'. Did you mean: lora"),
        ({"methods": [{"name": "lora", "space": {"rnak": [4]}}]}, "space.rnak: unknown lora setting 'rnak'. Did you mean: rank"),
        ({"methods": [{"name": "lora", "fixed": {"rank": 0}}]}, "invalid lora setting rank=0"),
        ({"methods": [{"name": "lora", "fixed": {"targets": "qproj"}}]},
         "methods[0].fixed: Unknown target module 'qproj'. Did you mean: q_proj"),
        ({"methods": [{"name": "lora", "space": {"targets": ["attn", "qkv_proj"]}}]},
         "methods[0].space.targets: Unknown target module 'qkv_proj'"),
        ({"task": {"train": {"generated": None, "path": "no/such.jsonl"}, "kind": "generation",
                   "prompt": "{q}", "target": "{a}"}}, "task.train.path: no such file"),
        ({"task": {"train": {"generated": "party"}}}, "task.train.generated: Unknown generated task 'party'. Did you mean: parity"),
        ({"eval": {"forgetting": {"probe": "missing.txt", "fallback": "none"}}}, "eval.forgetting.probe: no such file"),
        ({"storage": {"url": "redis://x"}}, "storage.url: 'redis://x' is not an Optuna RDB URL"),
        ({"methods": [{"name": "lora"}, {"name": "lora"}]}, "'lora' appears twice"),
        ({"training": {"gpus": 0}}, "training.gpus: Input should be greater than or equal to 1"),
        ({"training": {"gpus": 2, "parallel": "zero3"}}, "training.parallel: Input should be 'ddp' or 'fsdp'"),
        ({"training": {"gpu": 2}}, "training.gpu: unknown key. Did you mean: gpus?"),
        ({"training": {"parallel": "fsdp"}}, "training: parallel: fsdp shards over several ranks; set gpus: 2"),
        ({"training": {"gpus": 2, "parallel": "fsdp", "optimizer": "adamw8bit"}},
         "training: optimizer: adamw8bit (bitsandbytes) cannot step FSDP's sharded parameters"),
        ({"training": {"gpus": 2, "parallel": "fsdp"}, "methods": [{"name": "qlora"}]},
         "methods[0]: qlora trains on a bitsandbytes-quantized base, which training.parallel: fsdp cannot shard"),
        ({"training": {"gpus": 2, "parallel": "fsdp"}, "methods": [{"name": "lora", "space": {"quant": ["none", "nf4"]}}]},
         "methods[0]: lora trains on a bitsandbytes-quantized base"),
    ],
)
def test_bad_suite_exit_2_with_field_path(capsys, tmp_path: Path, changes: dict, expected: str) -> None:
    code, out, err = validate(capsys, write_suite(tmp_path, changes))
    assert code == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_yaml_errors_and_missing_suite_file(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethods: [lora\n")
    code, _, err = validate(capsys, bad)
    assert code == 2 and "not valid YAML (line" in err
    code, _, err = validate(capsys, tmp_path / "nope.yaml")
    assert code == 2 and "cannot read suite" in err
    code, _, err = validate(capsys, tmp_path)
    assert code == 2 and "is a directory" in err


def test_yaml_cannot_construct_python_objects(capsys, tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    code, _, err = validate(capsys, evil)
    assert code == 2 and "not valid YAML" in err


def test_valid_suite_and_every_shipped_suite(capsys, tmp_path: Path) -> None:
    code, out, err = validate(capsys, write_suite(tmp_path))
    assert code == 0, err
    assert "valid suite 'tiny-test'" in out
    suites = Path(__file__).resolve().parents[2] / "suites"
    for path in sorted(suites.glob("*.yaml")):
        if path.stem == "overnight":
            continue  # names a Hub model and dataset: needs the network
        code, out, err = validate(capsys, path)
        assert code == 0, (path.name, err)


def test_overnight_suite_schema() -> None:
    from peftplan.harness.suite import load_suite

    loaded = load_suite(Path(__file__).resolve().parents[2] / "suites" / "overnight.yaml")
    assert loaded.suite.model.id.startswith("meta-llama/")
    assert loaded.suite.eval.lm_eval is not None


def test_resolved_suite_parses_back_to_itself() -> None:
    """A run directory stores the resolved suite; trials and resumes parse it again."""
    from peftplan.harness.suite import parse_suite
    from tests.harness.tiny import TINY_SUITE, deep_update

    suite = parse_suite(deep_update(TINY_SUITE, {"budget": {"memory_cap": "200KiB", "vram": 24, "trial_timeout": "10m"},
                                                 "methods": [{"name": "lora", "space": {"rank": [4, 8]}}]}))
    again = parse_suite(suite.model_dump(mode="json"))
    assert again == suite
    assert again.budget.memory_cap == 200 * 1024 and again.budget.vram == 24 * 1024**3
    assert again.budget.trial_timeout == 600
