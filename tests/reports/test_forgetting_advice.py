"""A best trial that forgets far more than the other methods' best trials is flagged (docs/harness.md gives the
threshold): the demo's LoRA won on accuracy with Δ loss 2.7 against IA3's 0.11, and nothing said so."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from peftplan.reports.advice import FORGETTING_MIN_DELTA, FORGETTING_RATIO, large_forgetting, when_to_pick
from peftplan.reports.build import build_report
from peftplan.reports.markdown import write_markdown
from peftplan.reports.rundir import load_run
from tests.reports.fixtures import make_run_dir


def comparison(lora: float, lora_ci: list[float] | None, ia3: float = 0.11, prompt: float | None = None) -> pd.DataFrame:
    rows = [{"method": "lora", "metric_name": "accuracy", "metric": 0.92, "forgetting": lora, "forgetting_ci": lora_ci,
             "peak": 8e8},
            {"method": "ia3", "metric_name": "accuracy", "metric": 0.79, "forgetting": ia3, "forgetting_ci": None,
             "peak": 8.2e8}]
    if prompt is not None:
        rows.append({"method": "prompt", "metric_name": "accuracy", "metric": 0.66, "forgetting": prompt,
                     "forgetting_ci": None, "peak": 8.1e8})
    return pd.DataFrame(rows)


def test_the_demo_winner_is_flagged_for_its_forgetting() -> None:
    demo = comparison(2.7, [2.5, 2.9])
    assert large_forgetting(demo) == {"lora": (2.7, 0.11)}
    when = when_to_pick(demo)
    assert when["lora"].startswith("best accuracy") and "⚠ forgets far more than the others (Δ 2.7 against 0.11)" \
        in when["lora"]
    assert "⚠" not in when["ia3"]


def test_the_threshold() -> None:
    assert (FORGETTING_RATIO, FORGETTING_MIN_DELTA) == (3.0, 0.1)
    # The low end of the interval decides: an interval reaching down near the others is no alarm.
    assert large_forgetting(comparison(2.7, [0.2, 5.0])) == {}
    # Three times the others' median, but only 0.06 nats more: too small to matter.
    assert large_forgetting(comparison(0.09, None, ia3=0.03)) == {}
    assert large_forgetting(comparison(0.5, None, ia3=0.03, prompt=0.2)) == {"lora": (0.5, 0.115)}
    assert large_forgetting(comparison(0.3, None, ia3=0.11)) == {}  # under 3x
    assert large_forgetting(comparison(float("nan"), None)) == {}  # not measured: nothing to compare


def test_the_report_says_so(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", with_study=False)
    for number in (0, 1, 3):  # every LoRA trial forgets a lot
        path = run / "trials" / f"lora-{number}.json"
        data = json.loads(path.read_text())
        data["forgetting"].update(delta=2.7, loss_adapted=5.8, delta_ci=[2.5, 2.9])
        path.write_text(json.dumps(data))
    report = build_report(load_run([run]))
    assert any(c.startswith("lora: its best trial forgets far more than the other methods' best trials: Δ loss "
                            "2.7 [2.5, 2.9] against their median 0.009") for c in report.caveats)
    text = write_markdown(report, tmp_path / "out").read_text()
    assert "⚠ forgets far more than the others" in text
