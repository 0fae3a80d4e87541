"""Hypothesis fuzzing of every user-input path: malformed suites and CLI argument lists.

Each generated input is certainly invalid (the strategies only build inputs a correct validator must
refuse), and each must end with exit code 2 and exactly one line on stderr: never a traceback, never a
hang (a per-example deadline). The CLI runs in-process through `peftplan.cli.main`, as the shell runs it.
"""

from __future__ import annotations

import string
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftplan.cli import main
from tests.harness.tiny import TINY_SUITE, deep_update

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECTIONS = ["model", "task", "search", "training", "eval", "budget", "storage"]
COUNTER = {"suites": 0, "argv": 0}

# Text that stresses encoders and terminals: control characters, RTL, astral planes, NUL excluded (YAML
# cannot hold it and the OS refuses it in argv).
weird_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                     max_size=40)
huge_numbers = st.sampled_from([10**40, -(10**40), 2**63, -(2**63) - 1, 1e308, -1e308])


def _not_a_key(known: set[str]) -> st.SearchStrategy[str]:
    return st.one_of(weird_text, st.from_regex(r"[a-z_]{1,20}", fullmatch=True)).filter(lambda k: k not in known)


# --- malformed suites ---------------------------------------------------------------------------------
def unknown_key() -> st.SearchStrategy[dict[str, Any]]:
    def build(section: str | None, key: str, value: Any) -> dict[str, Any]:
        if section is None:
            return {key: value}
        return {section: {key: value}}

    known = set(TINY_SUITE) | {"methods", "name"} | {k for s in SECTIONS for k in (TINY_SUITE.get(s) or {})}
    return st.builds(build, st.sampled_from([None, *SECTIONS]), _not_a_key(known),
                     st.one_of(st.integers(), weird_text, st.none()))


WRONG_TYPED = st.one_of(st.lists(st.integers(), min_size=1, max_size=3),
                        st.dictionaries(st.sampled_from("xyz"), st.integers(), min_size=1),
                        st.from_regex(r"[a-z]{1,8}", fullmatch=True))
NUMERIC_PATHS = [("training", "steps"), ("training", "batch_size"), ("training", "seq_len"), ("search", "trials"),
                 ("storage", "heartbeat_interval"), ("storage", "grace_period"), ("training", "eval_every")]


def wrong_type() -> st.SearchStrategy[dict[str, Any]]:
    numeric = st.builds(lambda p, v: {p[0]: {p[1]: v}}, st.sampled_from(NUMERIC_PATHS), WRONG_TYPED)
    section = st.builds(lambda s, v: {s: v}, st.sampled_from([*SECTIONS, "methods"]),
                        st.one_of(st.integers(), st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                  st.lists(st.integers(), min_size=1, max_size=2)))
    name = st.builds(lambda v: {"name": v}, st.one_of(st.integers(), st.lists(st.integers(), min_size=1)))
    return st.one_of(numeric, section, name)


def out_of_range() -> st.SearchStrategy[dict[str, Any]]:
    cases = [
        (("training", "batch_size"), st.one_of(st.integers(max_value=0), st.integers(min_value=65537), huge_numbers)),
        (("training", "seq_len"), st.one_of(st.integers(max_value=7), st.integers(min_value=1_048_577))),
        (("search", "trials"), st.one_of(st.integers(max_value=0), st.integers(min_value=100_001))),
        (("storage", "grace_period"), st.integers(max_value=1)),
        (("training", "grad_accum"), st.one_of(st.integers(max_value=0), st.integers(min_value=4097))),
        (("training", "lr"), st.one_of(st.floats(max_value=0.0), st.floats(min_value=10.0, allow_infinity=True))),
    ]
    return st.one_of(*[st.builds(lambda v, p=p: {p[0]: {p[1]: v}}, values) for p, values in cases])


BAD_URLS = st.sampled_from(["redis://h/0", "http://x", "postgresql://", "mongodb://h", "postgresql://h:99999/db",
                            "sqlite", "postgresql://h/db\nx", "mysql:/h"])


def bad_names() -> st.SearchStrategy[dict[str, Any]]:
    suite_name = st.one_of(
        weird_text.filter(lambda s: not all(c in string.ascii_letters + string.digits + "_.-" for c in s)),
        st.text(string.ascii_letters, min_size=101, max_size=5000),
    ).map(lambda v: {"name": v})
    method = _not_a_key({"lora", "qlora", "dora", "qdora", "rslora", "ia3", "prefix", "prompt", "adapter", "bitfit",
                         "loha", "lokr", "vera", "full"}).map(lambda v: {"methods": [{"name": v}]})
    generator = weird_text.map(lambda v: {"task": {"train": {"generated": v}}})
    storage = st.one_of(weird_text.filter(lambda s: "://" not in s), BAD_URLS).map(lambda v: {"storage": {"url": v}})
    return st.one_of(suite_name, method, generator, storage)


def bad_files(tmp: Path) -> st.SearchStrategy[dict[str, Any]]:
    missing = st.from_regex(r"[a-z]{1,12}\.(jsonl|csv|tsv)", fullmatch=True).map(
        lambda n: {"task": {"train": {"path": str(tmp / "missing" / n), "generated": None}}})
    directory = st.just({"task": {"train": {"path": str(tmp), "generated": None}}})
    return st.one_of(missing, directory)


def _write(tmp: Path, data: Any, raw: str | None = None) -> Path:
    COUNTER["suites"] += 1
    path = tmp / f"fuzz-{COUNTER['suites']}.yaml"
    path.write_text(raw if raw is not None else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"{argv!r} -> exit {code}: {err!r}"
    assert len(lines) == 1 and "Traceback" not in err, f"{argv!r} -> {err!r}"


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.data())
def test_malformed_suites_exit_2_with_one_line(data: st.DataObject, fuzz_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    mutation = data.draw(st.one_of(unknown_key(), wrong_type(), out_of_range(), bad_names(), bad_files(fuzz_dir)))
    path = _write(fuzz_dir, deep_update(TINY_SUITE, mutation))
    command = data.draw(st.sampled_from(["validate", "bench"]))
    argv = [command, str(path)] + (["--run-dir", str(fuzz_dir / f"run-{COUNTER['suites']}")] if command == "bench" else [])
    if command == "bench" and "task" in mutation and "path" in str(mutation):
        argv = ["validate", str(path)]  # bench checks data files when it prepares the task; validate up front
    assert_refused(argv, capsys)


RAW_DOCUMENTS = st.one_of(
    weird_text,  # any text: a scalar, a list, bad YAML, or a mapping that is no suite
    st.sampled_from([
        "!!python/object/apply:os.system ['touch {canary}']",
        "name: !!python/object/new:os.system ['touch {canary}']",
        "name: x\nmodel: !!python/name:os.system\n",
        "&a [*a, *a]",
        "[" * 5000,
        "a: b: c",
        "\t- x",
        "name: {{ __import__('os').system('touch {canary}') }}",
        "",
        "---\n...\n",
    ]),
)


@settings(FUZZ, max_examples=60)
@given(raw=RAW_DOCUMENTS)
def test_raw_documents_never_execute_and_exit_2(raw: str, fuzz_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    canary = fuzz_dir / "canary"
    path = _write(fuzz_dir, None, raw=raw.replace("{canary}", str(canary)))
    assert_refused(["validate", str(path)], capsys)
    assert not canary.exists(), "a suite file executed code"


# --- CLI argument lists --------------------------------------------------------------------------------
COMMANDS = ["plan", "trace", "methods", "models", "bench", "validate", "report", "worker"]
NOISE = st.one_of(st.from_regex(r"--(rank|alpha|seq-len|batch-size|format|method|dtype)", fullmatch=True),
                  st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), weird_text.filter(lambda s: not s.startswith("-h")))


def _cli_cases(tmp: Path) -> list[st.SearchStrategy[list[str]]]:
    def with_unknown_option(cmd: str, noise: list[str], flag: str) -> list[str]:
        return [cmd, *[n for n in noise if n not in ("--help", "-h")], f"--{flag}"]

    def typed(cmd: str, option: str, value: str) -> list[str]:
        base = {"plan": ["--model", "HuggingFaceTB/SmolLM2-135M-Instruct"],
                "trace": ["--model", "HuggingFaceTB/SmolLM2-135M-Instruct"]}.get(cmd, [])
        return [cmd, *base, option, value]

    unknown_flag = st.from_regex(r"zz[a-z\-]{0,20}", fullmatch=True)
    non_int = st.one_of(weird_text, st.from_regex(r"[0-9]+\.[0-9]+e[0-9]", fullmatch=True)).filter(
        lambda s: not s.strip().lstrip("+-").isdigit() and not s.startswith("-"))
    return [
        st.builds(with_unknown_option, st.sampled_from(COMMANDS), st.lists(NOISE, max_size=4), unknown_flag),
        st.builds(typed, st.sampled_from(["plan", "trace"]), st.sampled_from(["--rank", "--seq-len", "--batch-size"]),
                  non_int),
        st.builds(typed, st.just("plan"), st.sampled_from(["--format", "--dtype", "--quant", "--engine", "--attn"]),
                  weird_text.filter(lambda s: not s.startswith("-"))),
        st.builds(typed, st.just("plan"), st.just("--vram"),
                  st.one_of(weird_text, st.sampled_from(["nan", "inf", "-inf", "0", "1e400", "-3"])).filter(
                      lambda s: not s.startswith("--"))),
        st.builds(lambda n: ["plan", "--model", n], weird_text.map(lambda s: "zz\u2603" + s.replace("/", ""))),
        st.builds(lambda n: ["validate", str(tmp / "nope" / n)], st.from_regex(r"[a-z]{1,9}\.yaml", fullmatch=True)),
        st.builds(lambda cmd: [cmd, str(tmp)], st.sampled_from(["validate", "bench"])),
        st.builds(lambda n: ["report", str(tmp / "nope" / n)], st.from_regex(r"[a-z]{1,9}", fullmatch=True)),
        st.builds(lambda n: ["plan", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--peft-config",
                             str(tmp / "nope" / n)], st.from_regex(r"[a-z]{1,9}\.json", fullmatch=True)),
        st.builds(lambda url, name: ["worker", "--storage", url, "--study", name],
                  st.one_of(weird_text.filter(lambda s: "://" not in s), BAD_URLS),
                  st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
    ]


@FUZZ
@given(data=st.data())
def test_bad_cli_arguments_exit_2_with_one_line(data: st.DataObject, fuzz_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = data.draw(st.one_of(*_cli_cases(fuzz_dir)))
    COUNTER["argv"] += 1
    assert_refused(argv, capsys)


def test_fuzzed_at_least_200_inputs() -> None:
    # Runs after the three fuzz tests in this module: pytest keeps file order, and `make test` runs
    # pytest-xdist with --dist loadfile, so one worker runs this whole file.
    print(f"fuzzed {COUNTER['suites']} suite files and {COUNTER['argv']} argument lists")
    assert COUNTER["suites"] + COUNTER["argv"] >= 200, COUNTER


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("PEFTPLAN_DEBUG", raising=False)

