"""How long the traced engine takes on a 70B model at sequence length 4096 (target: <= 30 s).

Usage: .venv/bin/python benchmarks/trace_speed.py [--model ID] [--seq-len N] [--methods lora,qlora,...]

The first row is cold: it includes importing torch, transformers, peft and bitsandbytes in this fresh
process. The rest are warm (libraries loaded). Each trace builds the model at 4 and 5 blocks on the
meta device, applies the method, runs one steady-state step on fake tensors, and extrapolates to the
full depth.
"""

from __future__ import annotations

import argparse
import platform
import time


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="meta-llama/Llama-3.1-70B")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--methods", default="lora,qlora,full,dora,prompt")
    args = parser.parse_args()

    from peftplan.planner.context import TrainContext
    from peftplan.planner.trace import trace_memory

    rows = []
    for index, name in enumerate(args.methods.split(",")):
        for ckpt in (False, True):
            ctx = TrainContext(seq_len=args.seq_len, batch_size=args.batch_size, grad_checkpointing=ckpt)
            begin = time.perf_counter()
            result = trace_memory(args.model, name, ctx=ctx)
            seconds = time.perf_counter() - (started if index == 0 and not ckpt else begin)
            rows.append((name, ckpt, result.memory.peak_allocated / 2**30, result.peak_segment, seconds))

    import torch
    import transformers

    print(f"# trace speed: {args.model}, seq {args.seq_len} x batch {args.batch_size}, bf16, adamw")
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print()
    print("| method | checkpointing | peak (GiB) | peak at | seconds |")
    print("|---|---|---:|---|---:|")
    for i, (name, ckpt, gib, segment, seconds) in enumerate(rows):
        label = f"{seconds:.1f}" + (" (cold, imports included)" if i == 0 else "")
        print(f"| {name} | {'on' if ckpt else 'off'} | {gib:.2f} | {segment} | {label} |")
    print()
    print(f"total wall time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
