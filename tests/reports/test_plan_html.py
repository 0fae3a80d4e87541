"""`render_plan_html`: the plan JSON contract as one page of stacked memory bars against the VRAM line."""

from __future__ import annotations

import pytest

from peftplan.errors import BadInputError
from peftplan.reports.plan_html import COMPONENTS, memory_chart, render_plan_html
from tests.reports.fixtures import plan_json

GiB = 2.0**30


def test_bars_are_the_breakdown_and_add_up_to_the_total() -> None:
    plan = plan_json()
    chart = memory_chart(plan)
    assert chart.stacked and chart.horizontal
    assert chart.vlines == [(24.0, "VRAM 24 GiB (RTX 4090)")]
    by_name = {s.name: s for s in chart.series}
    for i, method in enumerate(plan["methods"]):
        memory = method["memory"]
        for key, name in COMPONENTS:
            if name in by_name:
                assert by_name[name].y[i] == method["method"]
                assert by_name[name].x[i] == pytest.approx(memory[key] / GiB)
            else:
                assert all(m["memory"][key] == 0 for m in plan["methods"])
        stacked = sum(s.x[i] for s in chart.series)
        assert stacked == pytest.approx(memory["total"] / GiB)


def test_page(tmp_path) -> None:
    plan = plan_json(model_id="<script>window.__xss=1</script>")
    page = render_plan_html(plan)
    assert page.count("plotly.js v") == 1
    assert "<script>window.__xss" not in page and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    assert "Recommendation: lora" in page and "fits with 3.2 GiB headroom" in page
    assert page.count('<tr data-status="oom"') == 1  # full fine-tuning does not fit in 24 GiB
    assert 'id="plan-table"' in page


def test_repeated_methods_get_distinct_bars() -> None:
    plan = plan_json()
    second = dict(plan["methods"][1], config={"rank": 64, "alpha": 128, "targets": "attn"})
    plan["methods"].append(second)
    labels = memory_chart(plan).series[0].y
    assert len(set(labels)) == len(labels) == 5


@pytest.mark.parametrize("bad", [{}, {"methods": "x"}, {"methods": [{"method": "lora"}]}, []])
def test_not_a_plan(bad) -> None:
    with pytest.raises(BadInputError):
        render_plan_html(bad)
