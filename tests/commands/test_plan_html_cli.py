"""`peftplan plan --format html`: one self-contained page with the plan's numbers."""

from __future__ import annotations

import json

from peftplan.cli import main


def test_plan_html_to_file_matches_the_json(tmp_path, capsys) -> None:
    out = tmp_path / "plan.html"
    args = ["plan", "--model", "HuggingFaceTB/SmolLM2-135M", "--vram", "8", "--method", "lora,qlora"]
    assert main([*args, "--format", "html", "--out", str(out)]) == 0
    assert main([*args, "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype html>")
    assert "HuggingFaceTB/SmolLM2-135M" in page
    assert page.count("<script src=") == 0  # plotly is inlined, nothing is fetched
    for entry in plan["methods"]:
        assert entry["method"] in page


def test_plan_table_cannot_go_to_a_file(tmp_path, capsys) -> None:
    code = main(["plan", "--model", "HuggingFaceTB/SmolLM2-135M", "--vram", "8", "--out", str(tmp_path / "x")])
    assert code == 2 and "--out needs" in capsys.readouterr().err
