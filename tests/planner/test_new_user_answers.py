"""Wrong answers a new user met (issue 12): a mistyped target, a mistyped model, an unknown Hub id.

Each is bad input: exit 2 with one line and a did-you-mean, the same in every command and in the
Python API; never a plan of something else with exit 0.
"""

from __future__ import annotations

import json

import pytest

import peftplan
from peftplan.cli import main
from peftplan.errors import BadInputError, UnknownNameError


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_exit_2(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, (code, out[-400:], err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("peftplan: error:") and needle in err, err
    assert "Traceback" not in out + err


# --- 1. a target that names nothing on the model -------------------------------------------------

TYPO = ("--model", "llama-3.1-8b", "--targets", "q_prj")


@pytest.mark.parametrize(
    "argv",
    [
        ("plan", *TYPO, "--vram", "24"),  # every method: was "skipped" nine times, exit 0
        ("plan", *TYPO, "--vram", "24", "--format", "json"),
        ("plan", *TYPO, "--vram", "24", "--method", "lora"),
        ("plan", *TYPO, "--vram", "24", "--method", "lora,prompt,adapter"),
        ("methods", *TYPO),  # every method: was "n/a" nine times, exit 0
        ("methods", *TYPO, "--method", "ia3"),
        ("trace", "--model", "smollm2-135m", "--targets", "q_prj", "--method", "lora,dora"),
    ],
)
def test_mistyped_target_is_bad_input_everywhere(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    assert_one_line_exit_2(*run(capsys, *argv), "Unknown target module 'q_prj'. Did you mean: q_proj")


def test_mistyped_target_in_the_python_api() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean: q_proj") as info:
        peftplan.plan("llama-3.1-8b", vram=24, targets="q_prj")
    assert info.value.suggestions[0] == "q_proj"
    with pytest.raises(UnknownNameError, match="q_prj"):
        peftplan.plan("llama-3.1-8b", vram=24, targets="q_proj,q_prj", fit_search=False)


@pytest.mark.parametrize(
    ("targets", "needle"),
    [
        ("re:.*q_prj", "Unknown target regex '.*q_prj'"),  # matches no module at all
        ("embed_tokens", "model.embed_tokens of meta-llama/Llama-3.1-8B, which is not a Linear layer"),
        ("re:.*norm", "which is not a Linear layer"),
        ("self_attn", "which is not a Linear layer"),  # a container module
    ],
)
def test_a_target_no_method_can_use_is_bad_input(capsys: pytest.CaptureFixture[str], targets: str, needle: str) -> None:
    assert_one_line_exit_2(*run(capsys, "plan", "--model", "llama-3.1-8b", "--vram", "24", "--targets", targets), needle)


def test_a_target_one_method_cannot_use_is_still_a_skip(capsys: pytest.CaptureFixture[str]) -> None:
    # GPT-2's c_attn exists and is a (Conv1D) Linear: LoRA adapts it, LoHa/LoKr cannot.
    code, out, _ = run(capsys, "plan", "--model", "gpt2", "--vram", "24", "--targets", "c_attn", "--format", "json")
    data = json.loads(out)
    assert code == 0
    skipped = {s["method"]: s["reason"] for s in data["skipped"]}
    assert "Conv1D" in skipped["loha"] and "Conv1D" in skipped["lokr"]
    assert {"lora", "ia3"} <= {m["method"] for m in data["methods"]}
    assert data["recommendation"]["method"] not in ("prompt", "prefix")


def test_correct_targets_still_plan_every_method() -> None:
    plan = peftplan.plan("llama-3.1-8b", vram=24, targets="q_proj,v_proj", fit_search=False)
    assert plan.method("lora").config["targets"] == ["q_proj", "v_proj"]
    assert {s["method"] for s in plan.skipped} == {"bitfit"}  # Llama has no biases


# --- 9. model typos get a did-you-mean ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("lama-3-8b", "meta-llama/Llama-3.1-8B"),  # had no suggestion
        ("llama-3-8b", "meta-llama/Llama-3.1-8B"),
        ("Lama3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("mistral7b", "mistralai/Mistral-7B-v0.1"),
        ("falcon7b", "tiiuae/falcon-7b"),
        ("tinylama", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
        ("qwen-2.5-7b", "Qwen/Qwen2.5-7B"),
        ("smollm-135m", "HuggingFaceTB/SmolLM2-135M"),
    ],
)
def test_model_typos_get_a_did_you_mean(capsys: pytest.CaptureFixture[str], typo: str, expected: str) -> None:
    assert_one_line_exit_2(*run(capsys, "plan", "--model", typo, "--vram", "24"), f"Did you mean: {expected}")


def test_no_suggestion_for_a_name_like_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--model", "zzzzzz", "--vram", "24")
    assert_one_line_exit_2(code, out, err, "Unknown model 'zzzzzz'")
    assert "Did you mean" not in err and "config.json" in err


# --- 8. an unknown Hub id: a local config.json is the way out ------------------------------------------


def test_offline_hub_id_points_to_a_local_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run(capsys, "plan", "--model", "acme/secret-model", "--vram", "24")
    assert_one_line_exit_2(code, out, err, "HF_HUB_OFFLINE is set")
    assert "local directory holding its config.json, or the config.json path" in err


def test_unreachable_hub_points_to_a_local_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    code, out, err = run(capsys, "plan", "--model", "meta-lama/Llama-3.1-8B", "--vram", "24")
    assert_one_line_exit_2(code, out, err, "127.0.0.1 is unreachable")
    assert "Did you mean: meta-llama/Llama-3.1-8B" in err and "config.json path" in err


def test_the_python_api_says_the_same() -> None:
    with pytest.raises(BadInputError, match="config.json path"):
        peftplan.plan("lama-3-8b", vram=24)
