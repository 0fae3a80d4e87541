"""The calibration matrix: the analytic planner's peak_allocated against the traced step, per cell.

Usage: .venv/bin/python benchmarks/calibration_matrix.py [--models A,B] [--methods m1,m2] [--tolerance 3]

Cells: architectures (GQA, tied embeddings, large vocabulary, biases, Conv1D, an encoder) x every
registered method (default configs) x checkpointing off/on x seq 512/2048 (scaled down to fit a
learned position table: GPT-2 240/960, RoBERTa 112/448) x batch 1/4. Prints a
Markdown table with both engines in MiB and the % error, then a summary; exit 1 if any cell misses.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time


def main() -> int:
    from peftplan.methods import method_names
    from peftplan.planner.trace_calibrate import ARCHITECTURES, calibration_cells

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ARCHITECTURES))
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--seq-lens", default="512,2048")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--tolerance", type=float, default=3.0, help="percent")
    args = parser.parse_args()

    import peft
    import torch
    import transformers

    started = time.perf_counter()
    print(f"# Calibration matrix ({datetime.date.today()}): analytic vs traced peak_allocated")
    print(
        f"# torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        "bf16 + autocast, adamw, sdpa, CPU dispatch rules on both sides; MiB; "
        "error = (analytic - trace) / trace"
    )
    print()
    print("| model | method | ckpt | seq | batch | trace MiB | analytic MiB | error % | trace peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    errors: list[float] = []
    misses, skipped = [], 0
    cells = calibration_cells(
        args.models.split(","),
        args.methods.split(","),
        seq_lens=[int(s) for s in args.seq_lens.split(",")],
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
    )
    for cell in cells:
        ctx = cell.ctx
        ckpt = "on" if ctx.grad_checkpointing else "off"
        head = f"| {cell.model_id} | {cell.method} | {ckpt} | {ctx.seq_len} | {ctx.batch_size} |"
        if cell.skipped:
            skipped += 1
            print(f"{head} - | - | n/a | {cell.skipped.split(':')[0][:60]} |")
            continue
        assert cell.traced is not None and cell.analytic is not None
        error = 100 * cell.error
        errors.append(abs(error))
        flag = " **miss**" if abs(error) > args.tolerance else ""
        if flag:
            misses.append(cell)
        traced, analytic = cell.traced.peak_allocated / 2**20, cell.analytic.peak_allocated / 2**20
        print(f"{head} {traced:,.1f} | {analytic:,.1f} | {error:+.2f}{flag} | {cell.peak_phase} |")
        sys.stdout.flush()
    print()
    if errors:
        mean = sum(errors) / len(errors)
        print(
            f"cells: {len(errors)} compared, {skipped} not applicable; |error| mean {mean:.2f}%, "
            f"max {max(errors):.2f}%; outside ±{args.tolerance:g}%: {len(misses)}"
        )
        print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 1 if misses or not errors or any(math.isnan(e) for e in errors) else 0


if __name__ == "__main__":
    sys.exit(main())
