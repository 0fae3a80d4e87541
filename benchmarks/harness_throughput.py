"""Harness training throughput against a plain peft + torch loop, and per-trial overhead.

1. Throughput: the harness's `train()` (with its memory probe on the steady-state step, as in a trial)
   against a plain loop written directly with peft and torch: same model, adapter, batches, optimizer,
   autocast and step count. Runs alternate (A, B, A, B, ...) so background load hits both alike; the
   table shows the median tokens/s of each and their ratio (target: >= 0.95).
2. Overhead: one real trial through `peftplan bench` (subprocess, imports, model load, measurements).
   The share of the trial's wall time spent starting the process and loading the model is reported.
   `--run RUN_DIR` reports the same for every trial of an existing run instead.

Usage: python benchmarks/harness_throughput.py [--steps 20] [--repeats 3] [--model embedded|tiny] [--run DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 768,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 260,
    "max_position_embeddings": 256, "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2,
}


def load(model_name: str) -> tuple[Any, Any]:
    import torch

    from peftplan.harness.loading import byte_tokenizer
    from peftplan.models.build import build_model

    if model_name == "tiny":
        torch.manual_seed(0)
        from peftplan.harness.loading import resolve_dtype

        return build_model(TINY, device="cpu", dtype=resolve_dtype("auto", "cpu")), byte_tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftplan.harness.embedded import embedded_dir

    directory = embedded_dir()
    from peftplan.harness.loading import resolve_dtype

    dtype = resolve_dtype("auto", "cpu")  # what a suite's default `model.dtype: auto` loads
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(directory)


def batches(tokenizer: Any, seq_len: int) -> list[Any]:
    from peftplan.harness.data import TaskInfo, render_examples
    from peftplan.harness.generated import PARITY, generate_records
    from peftplan.harness.tasks import PromptFormatter

    examples = render_examples(generate_records("parity", 400, 0), {**PARITY, "answer_regex": "(.*)"}, "bench")
    info = TaskInfo("parity", "classification", "generated", False, False, None, "(.*)", len(examples), 0)
    formatter = PromptFormatter(tokenizer, info, seq_len)
    return [formatter.encode(e, with_eos=False) for e in examples]


def adapted(model_name: str) -> tuple[Any, Any]:
    from peftplan.methods import get_method

    model, tokenizer = load(model_name)
    method = get_method("lora")
    return method.apply(model, method.make_config(rank=16, alpha=32.0, targets="all-linear")), tokenizer


def harness_run(model_name: str, steps: int, batch_size: int, seq_len: int, autocast: str | None) -> float:
    from peftplan.harness.measure import StepMemoryProbe
    from peftplan.harness.tasks import pad_id
    from peftplan.harness.train import TrainSettings, train

    model, tokenizer = adapted(model_name)
    items = batches(tokenizer, seq_len)
    settings = TrainSettings(steps=steps, batch_size=batch_size, grad_accum=1, lr=1e-4, eval_every=steps + 1,
                             autocast=autocast, seed=0)
    probe = StepMemoryProbe(model, "cpu", steps=steps)
    stats = train(model, items, items[:8], settings, pad=pad_id(tokenizer), profiler=probe)
    assert stats.tokens_per_s is not None
    return stats.tokens_per_s


def plain_run(model_name: str, steps: int, batch_size: int, seq_len: int, autocast: str | None) -> float:
    """The reference: the loop anyone would write with peft and torch, on the same batches."""
    import torch

    from peftplan.harness.tasks import batches_forever, collate, pad_id

    model, tokenizer = adapted(model_name)
    items = batches(tokenizer, seq_len)
    pad = pad_id(tokenizer)
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    source = batches_forever(items, batch_size, 0)
    model.train()
    tokens = 0
    started = time.perf_counter()
    for _ in range(steps):
        batch = collate(next(source), pad)
        tokens += int(batch["attention_mask"].sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - started)


def throughput(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from peftplan.harness.train import autocast_dtype

    autocast = autocast_dtype("auto", "cpu")
    harness, plain = [], []
    for _ in range(args.repeats):
        harness.append(harness_run(args.model, args.steps, args.batch_size, args.seq_len, autocast))
        plain.append(plain_run(args.model, args.steps, args.batch_size, args.seq_len, autocast))
    return harness, plain


def overhead_rows(run: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((run / "trials").glob("*.json")):
        data = json.loads(path.read_text())
        metrics = data["metrics"]
        wall = metrics.get("wall_time_s") or 0.0
        start, load_s = metrics.get("startup_s") or 0.0, metrics.get("load_time_s") or 0.0
        if wall > 0 and data["status"] in ("success", "pruned"):
            rows.append({"trial": path.stem, "status": data["status"], "wall_s": wall, "startup_s": start,
                         "load_s": load_s, "train_s": metrics.get("train_time_s") or 0.0,
                         "share": (start + load_s) / wall})
    return rows


def one_trial_run(model_name: str, steps: int) -> Path:
    """A one-trial bench through the real CLI (subprocess per trial), in a temporary directory."""
    import subprocess

    import yaml

    directory = Path(tempfile.mkdtemp(prefix="peftplan-overhead-"))
    model = {"config": TINY, "tokenizer": "bytes"} if model_name == "tiny" else {"id": "embedded"}
    suite = {
        "name": "overhead", "model": model,
        "task": {"train": {"generated": "parity", "size": 600}, "holdout": 100},
        "methods": [{"name": "lora"}], "search": {"trials": 1},
        "training": {"steps": steps, "batch_size": 8, "seq_len": 64, "eval_every": steps},
        "eval": {"task_examples": 64, "loss_examples": 16, "forgetting": {"tokens": 256, "window": 128},
                 "latency": {"prompt_tokens": 32, "new_tokens": 8, "repeats": 1}},
    }
    (directory / "suite.yaml").write_text(yaml.safe_dump(suite))
    subprocess.run([sys.executable, "-m", "peftplan.cli", "bench", str(directory / "suite.yaml"), "--run-dir",
                    str(directory / "run")], check=True, cwd=ROOT)
    return directory / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--run", type=Path, default=None, help="report overhead from this run directory")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    harness, plain = throughput(args)
    h, p = statistics.median(harness), statistics.median(plain)
    print(f"\nTraining throughput, LoRA r16 all-linear, {args.model}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} alternating runs, {torch.get_num_threads()} threads")
    print("| loop | tokens/s (median) | runs |")
    print("|---|---|---|")
    print(f"| harness train() | {h:.1f} | {', '.join(f'{v:.1f}' for v in harness)} |")
    print(f"| plain peft + torch | {p:.1f} | {', '.join(f'{v:.1f}' for v in plain)} |")
    print(f"| ratio | {h / p:.3f} | target >= 0.95 |")
    if args.skip_overhead:
        return
    run = args.run or one_trial_run(args.model, args.steps)
    rows = overhead_rows(run)
    print(f"\nPer-trial overhead (process start + imports, model load) in {run}")
    print("| trial | status | wall s | start s | load s | train s | overhead share |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['trial']} | {row['status']} | {row['wall_s']:.1f} | {row['startup_s']:.1f} | "
              f"{row['load_s']:.1f} | {row['train_s']:.1f} | {row['share']:.1%} |")
    if rows:
        total = sum(r["wall_s"] for r in rows)
        share = sum(r["startup_s"] + r["load_s"] for r in rows) / total
        print(f"| all | | {total:.1f} | | | | {share:.1%} |")


if __name__ == "__main__":
    main()
