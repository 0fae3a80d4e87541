"""One trial, run in its own subprocess: `python -m peftplan.harness.trial.entry work/<method>-<n>/spec.json`.

`entry.run_trial` reads top to bottom: load the base, measure it, apply the method, train, then measure the
trained model (task metric, forgetting, latency, adapter size). It writes `outcome.json` next to the spec,
whatever happens: an out-of-memory becomes status `oom`, any other error `failed`, and what was measured until
then is kept. The runner turns the outcome into the trial's result file.

With `training.gpus: N > 1` the trial process launches N ranks of itself through `accelerate launch`
(`harness/multigpu.py`) and writes `outcome.json` from what they wrote. Every rank runs `run_trial` on its
share of the batches (`harness/ranks.py`) and writes `outcome-rank<r>.json`; after training, rank 0 alone
measures the trained model, so the outcome has the same shape, plus every rank's memory peak. A rank that
fails exits non-zero once its outcome is written, which makes the launcher stop the others.

One module per job:

- `entry.py`: the process's entry point (`main`), a rank's part, failure recording, and `run_trial`;
- `recipe.py`: what the trial runs: its spec (`spec.json`), the context every part shares, its data;
- `training.py`: training this rank's share, and the memory and training figures of every rank;
- `measure_trial.py`: the base model's measurements before the method, the trained model's after;
- `forgetting.py`: the forgetting probe, and lm-eval scores set against the base's;
- `adapter_timing.py`: saving the trained adaptation (its size), timing its reload and its switch;
- `outcome.py`: the typed outcome (the result schema's measured part), written as `outcome.json`.

Nothing is imported here, so that `python -m` runs the entry module once, and the launcher and the runner
import only what they use.
"""

ENTRY = "peftplan.harness.trial.entry"  # what a trial process (and each rank) runs: python -m ENTRY spec.json
