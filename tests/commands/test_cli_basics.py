"""The listing commands and the bad-input contract: one line, a did-you-mean where it helps, exit 2."""

from __future__ import annotations

import json

import pytest

from peftplan.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_methods_lists_every_registered_method(capsys) -> None:
    from peftplan.methods import method_names

    code, out, _ = run(capsys, "methods", "--format", "json")
    assert code == 0
    assert [row["method"] for row in json.loads(out)["methods"]] == method_names()


def test_methods_counts_on_a_model(capsys) -> None:
    code, out, _ = run(capsys, "methods", "--model", "meta-llama/Llama-3.2-3B", "--method", "lora,prompt",
                       "--rank", "32", "--targets", "q_proj,v_proj", "--virtual-tokens", "200", "--format", "json")
    assert code == 0
    rows = {row["method"]: row for row in json.loads(out)["methods"]}
    assert rows["lora"]["trainable_params"] == 9_175_040
    assert rows["prompt"]["trainable_params"] == 614_400


def test_models_lists_the_catalog(capsys) -> None:
    code, out, _ = run(capsys, "models", "--format", "json")
    ids = {row["id"] for row in json.loads(out)}
    assert code == 0 and {"meta-llama/Llama-3.1-8B", "openai-community/gpt2", "FacebookAI/roberta-base"} <= ids


def test_peft_config_round_trip(capsys, tmp_path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM", "a_field_from_the_future": None,
    }))
    code, out, err = run(capsys, "methods", "--model", "meta-llama/Llama-3.2-3B", "--peft-config", str(tmp_path),
                         "--format", "json")
    assert code == 0
    (row,) = json.loads(out)["methods"]
    assert (row["method"], row["trainable_params"]) == ("lora", 9_175_040)
    assert "a_field_from_the_future" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["methods", "--model", "meta-llama/Llama-3.1-8b-typo"], "Did you mean"),
        (["methods", "--model", "llama-3.2-3b", "--method", "lroa"], "Did you mean: lora"),
        (["methods", "--model", "llama-3.2-3b", "--method", "lora", "--targets", "qproj"], "Did you mean: q_proj"),
        (["methods", "--method", "lora", "--rank", "0"], "invalid lora setting rank=0"),
        (["methods", "--method", "lora", "--rank", "-3"], "rank=-3"),
        (["methods", "--rnk", "3"], "--rank"),
        (["methods", "--model", "/no/such/dir"], "no such file"),
        (["methods", "--method", "prompt", "--rank", "4"], "does not apply"),
        (["methods", "--format", "yaml"], "Unknown format"),
        (["methods", "--model", "gpt2", "--method", "loha"], "Conv1D"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv: list[str], expected: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"r": 8}', "no 'peft_type'"),
        ('{"peft_type": "BOFT", "target_modules": ["q_proj"]}', "not a method peftplan plans"),
        ('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], "layers_to_transform": [0]}', "layers_to_transform"),
    ],
)
def test_malformed_peft_config(capsys, tmp_path, content: str, expected: str) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text(content)
    code, _, err = run(capsys, "methods", "--peft-config", str(path))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_missing_peft_config_file(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "methods", "--peft-config", str(tmp_path / "nope.json"))
    assert code == 2 and "cannot read" in err
