"""The decision (planner/decide.py): whole configurations searched under the training budget and the serving
needs, pins kept, reasons from the chosen configuration's own numbers, verified suggestions when nothing
fits, and the limit columns."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import peftplan
from peftplan.cli import main
from peftplan.methods import get_method
from peftplan.models import get_spec
from peftplan.planner.context import TrainContext
from peftplan.planner.decide import Search, quality, target_rank
from peftplan.planner.memory import step_model_from_terms
from peftplan.planner.plan import Plan

GIB = 1 << 30
LLAMA = "meta-llama/Llama-3.1-8B"
LLAMA_70B = "meta-llama/Llama-3.1-70B"
SMOL = "HuggingFaceTB/SmolLM2-135M"
MEMORY_FIELDS = {"weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits",
                 "overhead", "peak_allocated", "reserved", "total", "paged", "host"}


def chosen(plan: Plan) -> dict:
    rec = plan.recommendation.to_dict()
    assert rec["method"] is not None, rec["reasons"]
    first = rec["candidates"][0]
    assert first["method"] == rec["method"] and first["config"] == rec["config"]
    return first


def assert_within_budgets(plan: Plan) -> dict:
    """The recommended configuration trains within the budget and serves within the serving GPU."""
    first = chosen(plan)
    assert first["fits"] and first["memory"]["total"] <= plan.budget.vram_bytes
    serving = plan.recommendation.to_dict()["serving"]
    assert serving["gpu_bytes"] == first["serving"]["gpu_bytes"] <= serving["budget_bytes"]
    return first


@pytest.mark.parametrize("args", [
    dict(model=LLAMA, vram=24),
    dict(model=LLAMA, vram=12, grad_checkpointing=True, seq_len=1024),
    dict(model=LLAMA, vram=24, tasks=200, switching="multi-tenant"),
    dict(model=LLAMA, gpu="l4", tasks=12, switching="hot-swap", examples=5000),
    dict(model=LLAMA_70B, vram=48),
    dict(model=LLAMA_70B, gpu="h100", gpus=8),
    dict(model=SMOL, vram=8, examples=500_000),
])
def test_the_recommendation_fits_training_and_serving(args: dict) -> None:
    args = dict(args)
    assert_within_budgets(peftplan.plan(args.pop("model"), **args))


def test_two_hundred_tenants_on_24_gib_no_longer_overflow_the_card() -> None:
    plan = peftplan.plan(LLAMA, vram=24, tasks=200, switching="multi-tenant")
    first = assert_within_budgets(plan)
    # The old pick (16-bit LoRA r16 with every adapter resident) needs more than the card here.
    lora = plan.method("lora").serving
    assert lora is not None and not lora["fits"] and lora["gpu_bytes"] > 24 * GIB
    assert (first["method"], first["config"].get("quant")) != ("lora", "none")
    assert first["serving"]["flags"] and "--max-loras" in first["serving"]["flags"]
    for cand in plan.recommendation.candidates:  # every candidate that claims to fit serves within the card
        assert not cand["fits"] or cand["serving"]["gpu_bytes"] <= 24 * GIB


def test_the_choice_moves_when_switching_needs_demand_it() -> None:
    one = chosen(peftplan.plan(LLAMA, vram=24))
    many = assert_within_budgets(peftplan.plan(LLAMA, vram=24, tasks=500, switching="multi-tenant"))
    assert (one["method"], one["config"]["quant"]) == ("lora", "none")
    assert many["config"] != one["config"] or many["method"] != one["method"]
    assert many["serving"]["resident_adapters"] == 32 and many["serving"]["host_adapters"] == 500
    # A busier service moves it further: fewer or smaller slots, a smaller base.
    busy = peftplan.plan(LLAMA, vram=24, tasks=500, switching="multi-tenant", serve_concurrency=64,
                         serve_context=512)
    assert_within_budgets(busy)


def test_reasons_quote_the_chosen_configurations_own_numbers() -> None:
    plan = peftplan.plan(LLAMA, vram=40, grad_checkpointing=True, seq_len=1024, examples=200_000)
    first = assert_within_budgets(plan)
    reasons = plan.recommendation.reasons
    rank = first["config"]["rank"]
    assert rank == 128 == target_rank(200_000)
    total = first["memory"]["total"]
    assert f"r={rank}," in reasons[0] and f"{total / GIB:.1f} GiB of 40.0 GiB" in reasons[0]
    assert f"micro-batch {first['training']['micro_batch']} x {first['training']['grad_accum']}" in reasons[0]
    assert any(f"Rank {rank} for 200,000 examples" in r for r in reasons)
    serving = first["serving"]
    assert any(f"{serving['gpu_bytes'] / GIB:.1f} GiB of" in r for r in reasons)
    hours = first["throughput"]["hours"]
    assert any(f"{hours:,.1f} h" in r for r in reasons)
    assert first["reasons"] == reasons  # the candidate's own reasons are the recommendation's


def test_rank_follows_the_data_size() -> None:
    assert chosen(peftplan.plan(LLAMA, vram=40, examples=200))["config"]["rank"] == 4
    assert chosen(peftplan.plan(LLAMA, vram=40))["config"]["rank"] == 16
    few = peftplan.plan(LLAMA, vram=40, examples=10)
    assert any("hard to train" in r for r in few.recommendation.reasons)


def test_the_prior_follows_the_literature() -> None:
    spec = get_spec(LLAMA)
    lora = get_method("lora")

    def score(method: str = "lora", examples: int | None = None, **cfg: object) -> float:
        m = get_method(method)
        c = m.make_config(**cfg)
        return quality(spec, m.memory_terms(spec, c), c, examples=examples).score

    assert score() > score(targets="mlp") > score(targets="attn")  # all-linear beats attention-only
    assert score(rank=16) > score(rank=8) and score(rank=32, examples=50_000) > score(rank=16, examples=50_000)
    assert score() > score("qlora") > score(targets="mlp") - 0.1  # QLoRA close to LoRA
    assert score("full", examples=2_000_000) > score(examples=2_000_000)  # full pays off on large data
    assert score("full", examples=1000) < score(examples=1000)
    assert lora.make_config().rank == 16


@pytest.mark.parametrize(("argv", "check"), [
    (["--method", "lora", "--rank", "8", "--targets", "q_proj,v_proj"],
     lambda c: c["config"]["rank"] == 8 and c["config"]["targets"] == ["q_proj", "v_proj"]),
    (["--optimizer", "adamw", "--no-grad-ckpt", "--seq-len", "1024"],
     lambda c: c["training"]["optimizer"] == "adamw" and c["training"]["checkpointing"] == "none"
     and c["training"]["seq_len"] == 1024),
    (["--batch-size", "1", "--method", "qlora", "--quant", "int8"],
     lambda c: c["training"]["micro_batch"] == 1 and c["config"]["quant"] == "int8"),
    (["--gpus", "2", "--shard", "zero2"], lambda c: c["training"]["shard"] == "zero2"),
])
def test_every_flag_the_user_passed_stays_as_given(argv: list[str], check, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", LLAMA, "--vram", "24", *argv, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for cand in data["recommendation"]["candidates"]:
        assert check(cand), cand


def test_what_the_user_left_free_is_searched() -> None:
    plan = peftplan.plan(LLAMA_70B, gpu="h100", gpus=8)
    first = assert_within_budgets(plan)
    assert first["training"]["shard"] != "none"  # sharding over the budget's GPUs
    assert first["training"]["micro_batch"] * first["training"]["grad_accum"] * 8 >= 16
    tight = peftplan.plan(LLAMA_70B, vram=48)  # no --seq-len: the default may be shortened
    first = assert_within_budgets(tight)
    assert first["training"]["seq_len"] < 2048
    assert any("Trains at" in r and "tokens per sequence" in r for r in tight.recommendation.reasons)
    assert {"flag": "--seq-len", "from": "2048", "to": str(first["training"]["seq_len"])} in first["changes"]


def test_nothing_fits_gives_verified_smallest_changes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "-m", LLAMA_70B, "--vram", "48", "--grad-ckpt", "--batch-size", "1", "--seq-len", "2048"]
    assert main([*argv, "--format", "json"]) == 3
    rec = json.loads(capsys.readouterr().out)["recommendation"]
    assert rec["method"] is None and rec["suggestions"]
    in_use = {"--grad-ckpt", "--batch-size 1", "--seq-len 2048", "--vram 48", "--checkpointing recompute"}
    for suggestion in rec["suggestions"]:
        assert {"flags", "total", "fits"} <= set(suggestion)
        assert suggestion["fits"] and suggestion["total"] > 0
        flags = suggestion["flags"]
        pairs = {" ".join(flags[i:i + 2]) for i in range(len(flags))} | set(flags)
        assert not pairs & in_use, flags  # never a setting already in use
        # Re-planned and verified: the plan with the change fits.
        assert main([*argv, *flags, "--format", "json"]) == 0, flags
        data = json.loads(capsys.readouterr().out)
        assert data["recommendation"]["candidates"][0]["memory"]["total"] <= data["budget"]["vram_bytes"]
    assert any(s["flags"][:2] == ["--seq-len", "512"] or s["flags"][0] in ("--kbit-prep", "--gpus")
               for s in rec["suggestions"])


def test_nothing_fits_at_all_on_one_gpu_suggests_more_gpus() -> None:
    plan = peftplan.plan(LLAMA_70B, vram=24)
    rec = plan.recommendation
    assert rec.method is None and plan.recommendation.candidates
    assert not any(c["fits"] for c in rec.candidates)
    gpus = [s for s in rec.suggestions if s["flags"][0] == "--gpus"]
    assert gpus and gpus[0]["fits"] and gpus[0]["total"] <= 24 * GIB
    assert any("--gpus" in r for r in rec.reasons)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--method", "full", "--quant", "nf4"], "--quant nf4 contradicts --method full"),
    (["--grad-ckpt", "--checkpointing", "none"], "--grad-ckpt contradicts --checkpointing none"),
    (["--no-grad-ckpt", "--checkpointing", "offload"], "contradicts --checkpointing offload"),
])
def test_contradictory_pins_exit_2_and_say_why(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", LLAMA, "--vram", "24", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_peft_config_with_an_adapter_flag_is_a_contradiction(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}))
    assert main(["plan", "-m", LLAMA, "--vram", "24", "--peft-config", str(tmp_path), "--rank", "4"]) == 2
    assert "--rank contradicts --peft-config" in capsys.readouterr().err


def test_repricing_a_step_in_another_context_equals_building_it() -> None:
    spec = get_spec("meta-llama/Llama-3.2-1B")
    search = Search()
    for method_name in ("lora", "qlora", "full"):
        method = get_method(method_name)
        cfg = method.make_config()
        terms = method.memory_terms(spec, cfg)
        base = TrainContext(seq_len=512, gpus=4)
        for ctx in (replace(base, grad_checkpointing=True), replace(base, grad_checkpointing=True, ckpt_offload=True),
                    replace(base, optimizer="adamw8bit"), replace(base, optimizer="paged-adamw8bit", shard="fsdp"),
                    replace(base, shard="zero2", grad_checkpointing=True), replace(base, optimizer="adamw-fp32"),
                    replace(base, shard="zero3", optimizer_fused=True), replace(base, optimizer_fused=True)):
            reused = search.step(spec, method, cfg, terms, ctx)
            fresh = step_model_from_terms(spec, terms, ctx)
            for batch, seq in ((1, 512), (3, 2048)):
                assert reused.breakdown(batch, seq) == fresh.breakdown(batch, seq), (method_name, ctx)


def test_limit_columns_mean_something() -> None:
    plan = peftplan.plan(SMOL, vram=8)
    spec = get_spec(SMOL)
    smallest = min(min(lin.in_features, lin.out_features) for lin in spec.linears if lin.role != "output")
    lora = plan.method("lora")
    assert lora.max_rank == smallest == 192  # k_proj: 576 -> 192; the old column said 1212
    assert plan.method("full").max_rank is None and plan.method("ia3").max_rank is None
    assert plan.method("full").to_dict()["max_rank"] is None
    lokr, vera = plan.method("lokr"), plan.method("vera")
    assert lokr.max_rank_knob and "Kronecker" in lokr.max_rank_knob and lokr.max_rank is not None
    assert lokr.max_rank < smallest  # its factor w2 is whole from half its larger side
    assert vera.max_rank_knob and "shared" in vera.max_rank_knob and vera.max_rank is not None
    assert vera.max_rank <= smallest
    # A budget where a short sequence still fits (48 GiB no longer does: autocast's cached bf16 copies of the
    # fp32 adapters, 0.39 GiB, are alive at the end of the checkpointed forward).
    tight = peftplan.plan(LLAMA_70B, vram=49)
    qlora = tight.method("qlora")
    assert qlora.max_batch_size == 0 and qlora.max_seq_len > 0
    assert any(n.startswith("max batch 0") and f"{qlora.max_seq_len:,} tokens" in n for n in qlora.notes)


def test_the_json_contract_of_the_recommendation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-m", SMOL, "--vram", "8", "--format", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)["recommendation"]
    assert {"method", "config", "reasons", "candidates", "serving", "suggestions"} <= set(rec)
    assert 1 <= len(rec["candidates"]) <= 3 and rec["suggestions"] == []
    for cand in rec["candidates"]:
        assert {"method", "config", "memory", "fits", "serving"} <= set(cand)
        assert set(cand["memory"]) == MEMORY_FIELDS
    assert {"gpu_bytes", "resident_adapters", "swap_seconds", "flags"} <= set(rec["serving"])
    assert rec["serving"]["flags"] is None  # one merged task: no vLLM flags


def test_suite_methods_auto_is_the_recommended_shortlist(tmp_path: Path) -> None:
    from peftplan.harness.suite import parse_suite
    from tests.conftest import TINY_LLAMA

    data = {"name": "auto", "model": {"config": TINY_LLAMA, "tokenizer": "bytes"},
            "task": {"train": {"generated": "parity", "size": 100}}, "methods": "auto",
            "training": {"seq_len": 64, "batch_size": 4}, "budget": {"vram": "1GiB"}}
    suite = parse_suite(data)
    plan = peftplan.plan("tiny", model_config=TINY_LLAMA, vram=1, seq_len=64, batch_size=4, grad_checkpointing=False,
                         optimizer="adamw")
    fitting = [c for c in plan.recommendation.candidates if c["fits"]]
    assert [m.name for m in suite.methods] == [c["method"] for c in fitting]
    assert suite.methods[0].fixed["rank"] == fitting[0]["config"]["rank"]
    from peftplan.errors import BadInputError

    with pytest.raises(BadInputError, match="methods"):
        parse_suite({**data, "methods": "automatic"})
