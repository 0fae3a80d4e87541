"""Snapshot `peftplan plan --format json` for every catalog model in a few contexts, and compare two snapshots.

Issue 13's check: the plan JSON is byte-identical before and after a refactor, except for additions and
for the cells a fix is meant to change. Usage:

    python scripts/compare_plans.py snapshot TREE OUT [--jobs N] [--context NAME ...] [--model ID ...] [--isolated]
    python scripts/compare_plans.py compare BEFORE AFTER [--expected FILE] [--group]
    python scripts/compare_plans.py contexts

`snapshot` runs the CLI of the source tree TREE (a checkout of peftplan; its code, not the installed one)
for every id of TREE's catalog in every context of `CONTEXTS` (all methods unless the context names some;
the stack-knob contexts run one model per architecture, the traced one three small models), and writes
OUT/<context>/<model>.json:
the argv, exit code, outcome (plan, no-fit, bad-input, failed), stderr, the sha256 of stdout and the
parsed plan. The plans run in `--jobs` worker processes (the CLI's `main(argv)` called in-process with
stdout and stderr captured, which is what `peftplan plan ...` prints), with a fresh cache directory, an
empty user config directory and the Hub offline, so the snapshot depends on TREE alone. OUT/manifest.json
records the tree's commit, its uncommitted files and timings (never compared). `--isolated` runs one
process per plan instead (slower; to check that in-process runs do not leak state from plan to plan).

`compare` prints every cell (a JSON path into a plan; `<exit_code>`, `<stderr>`, `<argv>` for the rest)
that differs as `model | context | path | before | after`: first the changed and removed cells that no
`--expected` pattern covers (they make the exit status 1), then the expected ones with their reason, then
the additions (paths present only after; allowed). Scalars compare by type and exact value (floats by
repr, so byte-identical is the bar); lists of objects with a unique `method`/`name`/`id` are matched by
that key (`methods[lora].memory.total`), other lists by index (`notes[0]`). A plan whose cells agree but
whose bytes do not (key order, formatting) is reported as a change of `<stdout bytes>`. `VOLATILE` paths
(measured wall times) are left out.

The `--expected` file (YAML or JSON) is a list of `{path, reason, model?, context?}` or a mapping
`{path: reason}`; patterns are globs where `*` matches anything (dots and brackets included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One model of each catalog architecture (the larger contexts' subset), and a few small ones to trace.
REPRESENTATIVE = (
    "EleutherAI/pythia-1b", "FacebookAI/roberta-base", "HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-8B", "google-bert/bert-base-uncased", "google/gemma-2-2b", "google/gemma-7b",
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "microsoft/Phi-3-mini-4k-instruct",
    "microsoft/deberta-v2-xxlarge", "microsoft/phi-2", "mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-v0.1",
    "openai-community/gpt2", "tiiuae/falcon-7b",
)
TRACED = ("openai-community/gpt2", "HuggingFaceTB/SmolLM2-135M", "google-bert/bert-base-uncased")


@dataclass(frozen=True)
class Context:
    """The plan options after `--model ID --format json` (each names a budget: plan needs one)."""

    options: tuple[str, ...]
    models: tuple[str, ...] | None = None  # None: every catalog model


CONTEXTS: dict[str, Context] = {
    "default": Context(("--gpu", "rtx-4090")),
    "torchtune-qlora-lora": Context(("--gpu", "rtx-4090", "--method", "qlora,lora", "--stack", "torchtune")),
    "seq4096-bs4-ckpt": Context(("--gpu", "a100-80gb", "--seq-len", "4096", "--batch-size", "4", "--grad-ckpt")),
    "unsloth": Context(("--gpu", "rtx-4090", "--stack", "unsloth")),
    "trl-fp16-8bit-r64": Context(("--vram", "16", "--stack", "trl", "--dtype", "fp16", "--optimizer", "adamw8bit",
                                  "--no-grad-ckpt", "--rank", "64", "--targets", "attn")),
    "fsdp-4xh100-serve": Context(("--gpu", "h100", "--gpus", "4", "--shard", "fsdp", "--examples", "20000",
                                  "--tasks", "8", "--switching", "multi-tenant")),
    "zero3-offload-llamafactory": Context(("--gpu", "a100-40gb", "--gpus", "2", "--shard", "zero3",
                                           "--cpu-offload", "--stack", "llama-factory"), REPRESENTATIVE),
    "axolotl-nf4-mlp-r8": Context(("--gpu", "l4", "--stack", "axolotl", "--quant", "nf4", "--rank", "8",
                                   "--alpha", "16", "--targets", "mlp", "--seq-len", "1024"), REPRESENTATIVE),
    "litgpt-fp32-sgd-nosearch": Context(("--gpu", "rtx-3090", "--stack", "litgpt", "--attn", "flash", "--dtype",
                                         "fp32", "--optimizer", "sgd", "--keep-logits", "--no-fit-search"),
                                        REPRESENTATIVE),
    "hot-swap-serve-cost": Context(("--gpu", "l40s", "--tasks", "20", "--switching", "hot-swap", "--serve-gpu", "l4",
                                    "--serve-context", "8192", "--serve-concurrency", "4",
                                    "--train-tokens", "50000000", "--epochs", "2"), REPRESENTATIVE),
    "cpu-eager-vt32-b128": Context(("--vram", "64", "--device", "cpu", "--attn", "eager", "--virtual-tokens", "32",
                                    "--bottleneck", "128"), REPRESENTATIVE),
    "torchtune-knobs": Context(("--gpu", "rtx-4090", "--stack", "torchtune", "--loss", "chunked", "--loss-chunks",
                                "4", "--offload-activations", "--optimizer-in-bwd", "--compile-loss", "--packing"),
                               REPRESENTATIVE),
    "trl-knobs": Context(("--gpu", "rtx-4090", "--stack", "trl", "--loss", "chunked", "--loss-recompute",
                          "--checkpointing", "offload", "--precision", "pure", "--adapter-dtype", "dtype",
                          "--kbit-prep", "none", "--no-loss-fp32"), REPRESENTATIVE),
    "bad-input": Context(("--gpu", "rtx-4090", "--method", "lorra"), ("openai-community/gpt2",)),
    "trace-both": Context(("--gpu", "h100", "--engine", "both", "--method", "lora,qlora,prefix", "--seq-len",
                           "1024"), TRACED),
}

# Plan paths (globs, `*` matching anything) whose values vary from run to run by nature: the traced
# engine's measured wall time. The analytic plan has none (its `*_seconds` are modelled, not measured).
VOLATILE = ("methods[*].trace.seconds",)


class _Missing:
    """The value of a cell on the side that lacks it (JSON null is None)."""

    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()
OUTCOMES = {0: "plan", 3: "no-fit", 2: "bad-input"}
ID_KEYS = ("method", "name", "id")

# The worker: run in the tree (cwd and PYTHONPATH), it reads jobs as JSON from stdin and writes envelopes.
_WORKER = r"""
import contextlib, io, json, sys, time, warnings
from pathlib import Path
tree, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
import peftplan
assert Path(peftplan.__file__).resolve().is_relative_to(tree), f"imported {peftplan.__file__}, not {tree}"
from peftplan.cli import main
timings = {}
for job in json.load(sys.stdin):
    stdout, stderr = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    timings[job["file"]] = round(time.perf_counter() - started, 3)
    path = out / job["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**job, "exit_code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}))
json.dump(timings, sys.stdout)
"""

_ISOLATED = r"""
import sys
from peftplan.cli import main
sys.exit(main(sys.argv[1:]))
"""


# -- snapshot --------------------------------------------------------------------------------------

def model_file(model: str) -> str:
    return model.replace("/", "__") + ".json"


def tree_env(tree: Path, scratch: Path) -> dict[str, str]:
    """The environment a plan runs in: TREE's code, a fresh cache, no user config, the Hub offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEFTPLAN_", "XDG_"))}
    env.update(PYTHONPATH=str(tree), PEFTPLAN_CACHE_DIR=str(scratch / "cache"),
               XDG_CONFIG_HOME=str(scratch / "config"), XDG_CACHE_HOME=str(scratch / "xdg-cache"),
               HF_HUB_OFFLINE="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1", COLUMNS="100",
               NO_COLOR="1")
    return env


def catalog_ids(tree: Path, env: dict[str, str], python: str) -> list[str]:
    code = "import json, peftplan.models.catalog as c; print(json.dumps(c.catalog_ids()))"
    done = subprocess.run([python, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout))


def git_info(tree: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": status.splitlines()}


def code_digest(tree: Path) -> str:
    """A hash of the package's files (code and data), to notice a tree edited while it is snapshotted."""
    digest = hashlib.sha256()
    for path in sorted((tree / "peftplan").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def envelope(raw: dict[str, Any]) -> dict[str, Any]:
    """A worker's record -> the snapshot file: the outcome, stdout's hash, and the plan parsed."""
    stdout: str = raw.pop("stdout")
    code = int(raw["exit_code"])
    record = {**raw, "outcome": OUTCOMES.get(code, "failed"),
              "stdout_sha256": hashlib.sha256(stdout.encode()).hexdigest(), "plan": None}
    record.pop("file", None)
    try:
        record["plan"] = json.loads(stdout) if stdout else None
    except ValueError:
        record["plan"] = None
    if record["plan"] is None or json.dumps(record["plan"], indent=2) + "\n" != stdout:
        record["stdout"] = stdout  # not the CLI's JSON (or not as json.dumps prints it): compared as text
    return record


def snapshot(tree: Path, out: Path, *, contexts: list[str], models: list[str] | None, jobs: int,
             isolated: bool, python: str) -> int:
    tree = tree.resolve()
    if not (tree / "peftplan" / "cli.py").is_file():
        print(f"compare_plans: {tree} is not a peftplan source tree", file=sys.stderr)
        return 2
    unknown = [c for c in contexts if c not in CONTEXTS]
    if unknown:
        print(f"compare_plans: unknown context(s) {unknown}; known: {', '.join(CONTEXTS)}", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        print(f"compare_plans: {out} is not empty; give a new directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    digest = code_digest(tree)
    with tempfile.TemporaryDirectory(prefix="compare-plans-") as scratch_dir:
        scratch = Path(scratch_dir)
        env = tree_env(tree, scratch)
        ids = catalog_ids(tree, env, python)
        if models:
            missing = [m for m in models if m not in ids]
            if missing:
                print(f"compare_plans: not in {tree}'s catalog: {missing}", file=sys.stderr)
                return 2
            ids = [m for m in ids if m in models]
        all_jobs = [{"model": model, "context": name, "file": f"{name}/{model_file(model)}",
                     "argv": ["plan", "--model", model, "--format", "json", *CONTEXTS[name].options]}
                    for name in contexts for model in ids
                    if CONTEXTS[name].models is None or model in CONTEXTS[name].models]
        # The slowest first, so that the workers finish together.
        all_jobs.sort(key=lambda job: job["context"] != "trace-both")
        raw_dir = scratch / "raw"
        timings = (_run_isolated(all_jobs, tree, raw_dir, env, python, jobs) if isolated
                   else _run_workers(all_jobs, tree, raw_dir, env, python, jobs))
        counts: dict[str, int] = {}
        for job in all_jobs:
            record = envelope(json.loads((raw_dir / job["file"]).read_text()))
            counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
            target = out / job["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(record, indent=1) + "\n")
    seconds = round(time.perf_counter() - started, 1)
    changed = code_digest(tree) != digest
    if changed:
        print(f"compare_plans: {tree}/peftplan changed while it was snapshotted; snapshot again", file=sys.stderr)
    manifest = {"tree": str(tree), **git_info(tree), "code_digest": digest, "tree_changed": changed,
                "python": python, "isolated": isolated, "jobs": jobs,
                "contexts": {name: list(CONTEXTS[name].options) for name in contexts}, "models": ids,
                "outcomes": counts, "seconds": seconds, "plan_seconds": timings}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    slowest = sorted(timings.items(), key=lambda kv: -kv[1])[:3]
    print(f"{len(all_jobs)} plans ({len(ids)} models, {len(contexts)} contexts) of {tree} "
          f"({manifest['commit'][:10] or 'no git'}{', dirty' if manifest['dirty_files'] else ''}) "
          f"-> {out} in {seconds} s; outcomes {counts}; slowest {slowest}")
    return 1 if counts.get("failed") or changed else 0


def _run_workers(all_jobs: list[dict[str, Any]], tree: Path, raw_dir: Path, env: dict[str, str],
                 python: str, jobs: int) -> dict[str, float]:
    shares = [all_jobs[i::jobs] for i in range(max(1, jobs))]
    procs = []
    for share in shares:
        if not share:
            continue
        proc = subprocess.Popen([python, "-c", _WORKER, str(tree), str(raw_dir)], cwd=tree, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(share))
        proc.stdin.close()
        procs.append(proc)
    timings: dict[str, float] = {}
    for proc in procs:
        assert proc.stdout is not None
        text = proc.stdout.read()
        if proc.wait() != 0:
            raise SystemExit(f"compare_plans: a worker failed (exit {proc.returncode})")
        timings.update(json.loads(text))
    return timings


def _run_isolated(all_jobs: list[dict[str, Any]], tree: Path, raw_dir: Path, env: dict[str, str],
                  python: str, jobs: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    def run(job: dict[str, Any]) -> tuple[str, float]:
        started = time.perf_counter()
        done = subprocess.run([python, "-c", _ISOLATED, *job["argv"]], cwd=tree, env=env,
                              capture_output=True, text=True)
        path = raw_dir / job["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**job, "exit_code": done.returncode, "stdout": done.stdout,
                                    "stderr": done.stderr}))
        return job["file"], round(time.perf_counter() - started, 3)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return dict(pool.map(run, all_jobs))


# -- compare ---------------------------------------------------------------------------------------

@dataclass
class Cell:
    model: str
    context: str
    path: str
    before: Any
    after: Any
    kind: str  # "changed", "removed", "added"
    reason: str = ""


@dataclass
class Expectation:
    path: str
    reason: str
    model: str = "*"
    context: str = "*"
    used: int = 0
    regexes: list[re.Pattern[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.regexes = [glob_regex(p) for p in (self.model, self.context, self.path)]

    def covers(self, cell: Cell) -> bool:
        return all(rx.fullmatch(s) for rx, s in zip(self.regexes, (cell.model, cell.context, cell.path),
                                                     strict=True))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches anything (dots and brackets too); everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


_VOLATILE_RX = [glob_regex(p) for p in VOLATILE]


def load_expected(path: Path) -> list[Expectation]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        data = [{"path": k, "reason": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise SystemExit(f"compare_plans: {path}: expected a list of {{path, reason}} or a mapping")
    result = []
    for item in data or []:
        if not isinstance(item, dict) or "path" not in item or not item.get("reason"):
            raise SystemExit(f"compare_plans: {path}: every entry needs a path and a reason: {item!r}")
        extra = set(item) - {"path", "reason", "model", "context"}
        if extra:
            raise SystemExit(f"compare_plans: {path}: unknown key(s) {sorted(extra)} in {item!r}")
        result.append(Expectation(**{k: str(v) for k, v in item.items()}))
    return result


def same_scalar(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    return repr(a) == repr(b) if isinstance(a, float) else bool(a == b)


def list_key(items: list[Any]) -> str | None:
    """The field that identifies each object of a list (unique and present in all), if there is one."""
    if not items or not all(isinstance(x, dict) for x in items):
        return None
    for key in ID_KEYS:
        values = [x.get(key) for x in items]
        if all(isinstance(v, str) for v in values) and len(set(values)) == len(values):
            return key
    return None


def diff(before: Any, after: Any, path: str, out: list[tuple[str, str, Any, Any]]) -> None:
    """Append (kind, path, before, after) for every cell that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        common = [k for k in before if k in after]
        for key in before:
            sub = f"{path}.{key}" if path else key
            if key not in after:
                out.append(("removed", sub, before[key], MISSING))
            else:
                diff(before[key], after[key], sub, out)
        for key in after:
            if key not in before:
                out.append(("added", f"{path}.{key}" if path else key, MISSING, after[key]))
        if [k for k in after if k in before] != common:
            out.append(("changed", f"{path}{{key order}}", common, [k for k in after if k in before]))
        return
    if isinstance(before, list) and isinstance(after, list):
        key = list_key(before)
        if key is not None and key == list_key(after):
            b_ids, a_ids = [x[key] for x in before], [x[key] for x in after]
            by_id = {x[key]: x for x in after}
            for item in before:
                sub = f"{path}[{item[key]}]"
                if item[key] in by_id:
                    diff(item, by_id[item[key]], sub, out)
                else:
                    out.append(("removed", sub, item, MISSING))
            for item in after:
                if item[key] not in set(b_ids):
                    out.append(("added", f"{path}[{item[key]}]", MISSING, item))
            kept = [i for i in a_ids if i in set(b_ids)]
            if kept != [i for i in b_ids if i in set(a_ids)]:
                out.append(("changed", f"{path}{{order}}", b_ids, a_ids))
            return
        for i, (b, a) in enumerate(zip(before, after, strict=False)):
            diff(b, a, f"{path}[{i}]", out)
        for i in range(len(after), len(before)):
            out.append(("removed", f"{path}[{i}]", before[i], MISSING))
        for i in range(len(before), len(after)):
            out.append(("added", f"{path}[{i}]", MISSING, after[i]))
        return
    if isinstance(before, dict | list) or isinstance(after, dict | list) or not same_scalar(before, after):
        out.append(("changed", path, before, after))


def prune(after: Any, before: Any) -> Any:
    """`after` without what `before` lacks (the additions), for the byte check."""
    if isinstance(before, dict) and isinstance(after, dict):
        return {k: prune(v, before[k]) for k, v in after.items() if k in before}
    if isinstance(before, list) and isinstance(after, list):
        key = list_key(before)
        if key is not None and key == list_key(after):
            by_id = {x[key]: x for x in before}
            return [prune(x, by_id[x[key]]) for x in after if x[key] in by_id]
        return [prune(a, b) for a, b in zip(after, before, strict=False)]
    return after


def strip_volatile(value: Any, path: str = "") -> Any:
    """`value` without the `VOLATILE` paths (named as `diff` names them)."""
    if isinstance(value, dict):
        kept = {}
        for key, sub in value.items():
            sub_path = f"{path}.{key}" if path else key
            if not any(rx.fullmatch(sub_path) for rx in _VOLATILE_RX):
                kept[key] = strip_volatile(sub, sub_path)
        return kept
    if isinstance(value, list):
        key = list_key(value)
        return [strip_volatile(x, f"{path}[{x[key]}]" if key else f"{path}[{i}]") for i, x in enumerate(value)]
    return value


def compare_records(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(kind, path, before, after) for every difference of two snapshot records of the same plan."""
    found: list[tuple[str, str, Any, Any]] = []
    for key in ("argv", "exit_code", "stderr"):
        if json.dumps(before.get(key)) != json.dumps(after.get(key)):
            found.append(("changed", f"<{key}>", before.get(key), after.get(key)))
    if before.get("stdout_sha256") == after.get("stdout_sha256"):
        return found
    b_plan, a_plan = before.get("plan"), after.get("plan")
    if b_plan is None or a_plan is None:  # an error or not JSON: the text is the cell
        found.append(("changed", "<stdout>", before.get("stdout", b_plan), after.get("stdout", a_plan)))
        return found
    b_plan, a_plan = strip_volatile(b_plan), strip_volatile(a_plan)
    cells: list[tuple[str, str, Any, Any]] = []
    diff(b_plan, a_plan, "", cells)
    found += cells
    if not any(kind != "added" for kind, *_ in cells):
        # The CLI prints json.dumps(plan, indent=2) + "\n" (the snapshot checked that each stdout is that,
        # or kept the text): without the additions and volatile values, the bytes must be the same.
        if "stdout" in before or "stdout" in after:
            if before.get("stdout") != after.get("stdout"):
                found.append(("changed", "<stdout>", before.get("stdout"), after.get("stdout")))
        elif json.dumps(prune(a_plan, b_plan), indent=2) != json.dumps(b_plan, indent=2):
            found.append(("changed", "<stdout bytes>", "(before's bytes)",
                          "differ beyond the cells and additions (formatting?)"))
    return found


def show_pair(before: Any, after: Any, width: int = 100) -> tuple[str, str]:
    """Both sides, readable; two long strings are cut to start a little before where they differ."""
    if isinstance(before, str) and isinstance(after, str) and max(len(before), len(after)) > width:
        same = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
                    min(len(before), len(after)))
        if same > 20:
            return show("..." + before[same - 20:], width), show("..." + after[same - 20:], width)
    return show(before, width), show(after, width)


def show(value: Any, width: int = 100) -> str:
    if value is MISSING:
        return repr(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = value if isinstance(value, str) and value else json.dumps(value, separators=(",", ":"))
        text = text.replace("\n", "\\n")
        return text if len(text) <= width else text[: width - 3] + "..."
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return repr(value)  # exact: byte-identical is the bar


def delta(before: Any, after: Any) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (before, after))
    if not numbers or before == after:
        return ""
    change = after - before
    pct = f" ({change / before * 100:+.3g}%)" if before else ""
    return f" | {change:+,.6g}{pct}"


def load_snapshot(root: Path) -> tuple[dict[str, Any], dict[tuple[str, str], Path]]:
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    files = {(p.parent.name, p.name): p for p in sorted(root.glob("*/*.json"))}
    return manifest, files


def compare(before_dir: Path, after_dir: Path, *, expected_path: Path | None, group: bool) -> int:
    for d in (before_dir, after_dir):
        if not d.is_dir():
            print(f"compare_plans: no snapshot directory {d}", file=sys.stderr)
            return 2
    expectations = load_expected(expected_path) if expected_path else []
    b_manifest, b_files = load_snapshot(before_dir)
    a_manifest, a_files = load_snapshot(after_dir)
    for label, manifest, d in (("before", b_manifest, before_dir), ("after", a_manifest, after_dir)):
        dirty = f", {len(manifest.get('dirty_files', []))} dirty files" if manifest.get("dirty_files") else ""
        print(f"{label}: {d} (tree {manifest.get('tree', '?')} at {manifest.get('commit', '?')[:10]}{dirty}; "
              f"code {manifest.get('code_digest', '?')})")
        if manifest.get("tree_changed"):
            print(f"WARNING: {d}: its tree was edited while it was snapshotted; the snapshot may mix versions")
    cells: list[Cell] = []
    identical = 0
    for key in sorted(set(b_files) | set(a_files)):
        context = key[0]
        if key not in a_files:
            rec = json.loads(b_files[key].read_text())
            cells.append(Cell(rec["model"], context, "<plan file>", rec["outcome"], MISSING, "removed"))
            continue
        if key not in b_files:
            rec = json.loads(a_files[key].read_text())
            cells.append(Cell(rec["model"], context, "<plan file>", MISSING, rec["outcome"], "added"))
            continue
        b_rec, a_rec = json.loads(b_files[key].read_text()), json.loads(a_files[key].read_text())
        found = compare_records(b_rec, a_rec)
        identical += not found
        cells += [Cell(b_rec["model"], context, path, b, a, kind) for kind, path, b, a in found]
    for cell in cells:
        if cell.kind == "added":
            continue
        for exp in expectations:
            if exp.covers(cell):
                exp.used += 1
                cell.reason = exp.reason
                break
    unexpected = [c for c in cells if c.kind != "added" and not c.reason]
    expected = [c for c in cells if c.kind != "added" and c.reason]
    added = [c for c in cells if c.kind == "added"]
    total = len(set(b_files) | set(a_files))
    print(f"plans: {total} ({identical} identical); cells: {len(unexpected)} changed or removed unexpectedly, "
          f"{len(expected)} changed as expected, {len(added)} added")
    _section("Changed or removed cells NOT expected", "| delta", unexpected, group)
    _section("Expected changes", "| delta | reason", expected, group)
    _section("Additions", "", added, group)
    for exp in expectations:
        if not exp.used:
            print(f"note: --expected pattern matched nothing: {exp.path} ({exp.reason})")
    return 1 if unexpected else 0


def _section(title: str, tail: str, cells: list[Cell], group: bool) -> None:
    if not cells:
        return
    columns = "path | plans, e.g. model context: before -> after | reason" if group else \
        f"model | context | path | before | after {tail}".strip()
    print(f"\n{title} ({columns}): {len(cells)}")
    if group:  # one line per path (list keys and indices kept), with how many plans and one example
        by_path: dict[tuple[str, str], list[Cell]] = {}
        for cell in cells:
            by_path.setdefault((cell.path, cell.reason), []).append(cell)
        for (path, reason), group_cells in by_path.items():
            first = group_cells[0]
            tail = f" | {reason}" if reason else ""
            before, after = show_pair(first.before, first.after, 50)
            print(f"  {path} | {len(group_cells)} plans, e.g. {first.model} {first.context}: "
                  f"{before} -> {after}{tail}")
        return
    for c in cells:
        tail = f" | {c.reason}" if c.reason else ""
        before, after = show_pair(c.before, c.after)
        print(f"  {c.model} | {c.context} | {c.path} | {before} | {after}{delta(c.before, c.after)}{tail}")


# -- command line ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="Plan every catalog model in every context with TREE's code.")
    snap.add_argument("tree", type=Path, help="A peftplan source tree (checkout or worktree).")
    snap.add_argument("out", type=Path, help="A new (or empty) directory for the snapshot.")
    snap.add_argument("--context", action="append", choices=list(CONTEXTS), help="Only these contexts.")
    snap.add_argument("--model", action="append", help="Only these catalog ids.")
    snap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Worker processes.")
    snap.add_argument("--isolated", action="store_true", help="One process per plan (slow; a leak check).")
    snap.add_argument("--python", default=sys.executable, help="The interpreter (its packages run TREE).")
    cmp = sub.add_parser("compare", help="Every cell that differs between two snapshots.")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--expected", type=Path, help="YAML/JSON of path patterns with a reason each.")
    cmp.add_argument("--group", action="store_true", help="One line per path instead of one per plan.")
    sub.add_parser("contexts", help="List the contexts and their plan options.")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        return snapshot(args.tree, args.out, contexts=args.context or list(CONTEXTS), models=args.model,
                        jobs=args.jobs, isolated=args.isolated, python=args.python)
    if args.command == "compare":
        return compare(args.before, args.after, expected_path=args.expected, group=args.group)
    for name, context in CONTEXTS.items():
        models = ("every catalog model" if context.models is None else
                  f"one model per architecture, {len(context.models)}" if context.models == REPRESENTATIVE
                  else ", ".join(context.models))
        print(f"{name}: peftplan plan --model ID --format json {' '.join(context.options)}\n    ({models})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `compare ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
