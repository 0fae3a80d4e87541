"""scripts/compare_plans.py `compare` on two hand-made snapshots (no plans run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def compare_plans() -> ModuleType:
    return load_script("scripts/compare_plans.py", "compare_plans")


def _write(compare_plans: ModuleType, root: Path, plan: dict[str, Any], exit_code: int = 0) -> None:
    """A snapshot of one plan, recorded as `snapshot` records the CLI's stdout."""
    raw = {"model": "org/m", "context": "default", "argv": ["plan", "--model", "org/m"], "exit_code": exit_code,
           "stdout": json.dumps(plan, indent=2) + "\n", "stderr": ""}
    (root / "default").mkdir(parents=True)
    (root / "default" / "org__m.json").write_text(json.dumps(compare_plans.envelope(raw)))


def _plan(total: int, **extra: Any) -> dict[str, Any]:
    method = {"method": "lora", "memory": {"total": total}, "trace": {"seconds": 1.5}, **extra}
    return {"model": {"id": "org/m"}, "methods": [{"method": "full", "memory": {"total": 9}}, method]}


def test_a_changed_cell_fails_an_added_cell_is_listed(compare_plans: ModuleType, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    _write(compare_plans, before, _plan(1_000_000))
    _write(compare_plans, after, _plan(1_000_001, adapter_bytes=0.5) | {"notes": []})
    assert compare_plans.main(["compare", str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "1 changed or removed unexpectedly, 0 changed as expected, 2 added" in out
    assert "org/m | default | methods[lora].memory.total | 1,000,000 | 1,000,001 | +1 (+0.0001%)" in out
    assert "org/m | default | methods[lora].adapter_bytes | (absent) | 0.5" in out
    assert "org/m | default | notes | (absent) | []" in out
    assert "trace.seconds" not in out  # volatile by nature

    expected = tmp_path / "expected.yaml"
    expected.write_text('- path: "methods[*].memory.total"\n  reason: "item 5: the fix"\n')
    assert compare_plans.main(["compare", str(before), str(after), "--expected", str(expected)]) == 0
    out = capsys.readouterr().out
    assert "org/m | default | methods[lora].memory.total | 1,000,000 | 1,000,001 | +1 (+0.0001%) | item 5: the fix" in out


def test_identical_bytes_and_types(compare_plans: ModuleType, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _write(compare_plans, tmp_path / "a", _plan(7))
    _write(compare_plans, tmp_path / "b", _plan(7) | {"model": {"id": "org/m"}})
    assert compare_plans.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "plans: 1 (1 identical)" in capsys.readouterr().out
    _write(compare_plans, tmp_path / "c", {**_plan(7), "methods": _plan(7)["methods"][:1] + [
        {"method": "lora", "memory": {"total": 7.0}, "trace": {"seconds": 1.5}}]})
    assert compare_plans.main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 1  # 7 -> 7.0
    assert "methods[lora].memory.total | 7 | 7.0" in capsys.readouterr().out
