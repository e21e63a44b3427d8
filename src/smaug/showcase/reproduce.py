"""`smaug showcase reproduce`: the paper's failure mode of DPO and its fix by DPOP, on a CPU in minutes.

What it does (each stage prints one line with the elapsed time; finished runs are reused):

1. data: short MetaMath-like problems (two arithmetic steps, "The answer is: N"), turned into
   preference pairs by our MetaMath builder (``smaug.data.build_metamath_pairs``: rejected = the chosen
   solution with ONE intermediate result corrupted, final answer untouched). Held-out problems are kept apart.
2. a tiny random Llama with a byte-level tokenizer (one token per digit), then ``axolotl train
   recipes/reproduce/sft.yml`` on the chosen solutions: the reference model, shared by all seeds.
3. per seed: ``axolotl train recipes/reproduce/dpo.yml`` and ``recipes/reproduce/dpop.yml`` with
   dpop_lambda 5, 50 and 500, all from the same SFT checkpoint with the same seed.
4. log-prob analysis of every run against the reference on held-out pairs (``smaug.evaluation.logprobs``),
   greedy exact match of the final answers on held-out problems, a Markdown + JSON table and the plots
   (paper Figures 4 and 5).

Hyperparameters live in the three recipes only; this module overrides paths, the seed and λ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_json, write_jsonl, write_text
from axolotl_dpop.provenance import read_provenance
from smaug.common.chat import chatml_prompt
from smaug.common.paths import RECIPES_DIR
from smaug.training import runner
from smaug.training.recipes import derive_recipe, load_recipe, write_derived_recipe

RECIPE_DIR = RECIPES_DIR / "reproduce"
LAMBDAS = (5.0, 50.0, 500.0)
DEFAULT_SEEDS = (0, 1)  # two seeds fit the 10-minute budget on 2 cores; --seeds 0 1 2 for a third (~13 min)
# Problem counts: enough pairs that the DPO runs never repeat a pair within their steps.
N_PROBLEMS = 3000
N_HELDOUT = 64
DATA_SEED = 0
MODEL = {"hidden_size": 128, "num_layers": 2, "seed": 0}
# --quick: one seed, DPO + DPOP(λ=50), half the steps (what tests/test_reproduce.py runs). Passed to axolotl
# as CLI overrides (--max-steps, --save-steps) of the recipes' values; sft_/pref_ say which recipes.
QUICK_LAMBDAS = (50.0,)
QUICK_OVERRIDES = {"sft_max_steps": 200, "pref_max_steps": 30}

ANSWER_RE = re.compile(r"The answer is:\s*(-?[\d,]*\.?\d+)")


# ------------------------------------------------------------------------------------------------ data


def prepare_data(out: Path, n_problems: int = N_PROBLEMS, n_heldout: int = N_HELDOUT) -> dict[str, Any]:
    """Write data/sft.jsonl, data/pairs_train.jsonl, data/pairs_heldout.jsonl, data/heldout_problems.jsonl."""
    from smaug.data import build_metamath_pairs, write_pairs
    from smaug.data.synthetic import two_step_metamath_row

    rows = [two_step_metamath_row(i, DATA_SEED) for i in range(n_problems)]
    # One solution per distinct query; held-out queries never appear in training.
    seen: set[str] = set()
    unique = [r for r in rows if not (r["query"] in seen or seen.add(r["query"]))]
    heldout_rows, train_rows = unique[:n_heldout], unique[n_heldout:]
    data = out / "data"
    # The strict rule (an intermediate result, never the final calculation): the failure mode this run shows.
    train_pairs, train_skips = build_metamath_pairs(train_rows, seed=DATA_SEED, fallback=False)
    heldout_pairs, heldout_skips = build_metamath_pairs(heldout_rows, seed=DATA_SEED, fallback=False)
    write_pairs(data / "pairs_train.jsonl", train_pairs)
    write_pairs(data / "pairs_heldout.jsonl", heldout_pairs)
    write_jsonl(
        data / "sft.jsonl",
        (
            {"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}]}
            for p in train_pairs
        ),
    )
    write_jsonl(data / "heldout_problems.jsonl", ({"query": r["query"], "answer": r["answer"]} for r in heldout_rows))
    info = {
        "problems": len(unique),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout_pairs),
        "skips": {"train": train_skips, "heldout": heldout_skips},
        "data_seed": DATA_SEED,
    }
    write_json(data / "data.json", info)
    return info


# ------------------------------------------------------------------------------------------- training


def run_is_done(run_dir: Path, expect: dict[str, Any] | None = None, parent: Path | None = None) -> bool:
    """A finished run: a saved model and the provenance file the plugin writes last, trained with the
    ``expect``-ed settings (e.g. max_steps, seed, dpop_lambda) from the current ``parent`` model, so that a
    --quick run is never reused by a full one (nor a DPO run whose SFT model was retrained)."""
    if not any((run_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        return False
    try:
        provenance = read_provenance(run_dir)
    except ValueError:
        return False
    if provenance is None:
        return False
    training = provenance.training or {}
    if any(training.get(key) is None or float(training[key]) != float(value) for key, value in (expect or {}).items()):
        return False
    if parent is not None:
        if (provenance.parent or {}).get("finished_at") != getattr(read_provenance(parent), "finished_at", None):
            return False
    return True


def recipe_value(name: str, key: str) -> Any:
    return load_recipe(RECIPE_DIR / f"{name}.yml").get(key)


def axolotl_train(
    recipe: Path,
    out: Path,
    run_dir: Path,
    overrides: dict[str, Any],
    log: Path,
    original_recipe: Path | None = None,
    threads: int | None = None,
) -> None:
    """``axolotl train <recipe> --key=value ...`` in one process (cwd = ``out``, so the recipe's relative data
    paths resolve there); the output goes to ``log``. A failure raises with the log's tail."""
    if run_dir.exists():  # a half-finished run from an interrupted call: start it again cleanly
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    # Threads: torch's default (all cores) unless OMP_NUM_THREADS says otherwise. On an idle 2-core machine
    # two threads were 15 % faster than one; on a machine already busy with other jobs set OMP_NUM_THREADS=1
    # (oversubscribed, two threads ran ~10x slower there).
    env = runner.axolotl_env(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled"
    )
    if threads and not os.environ.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(threads)
    if original_recipe:  # the plugin records this recipe in smaug_provenance.json instead of the copy
        env["SMAUG_RECIPE"] = str(original_recipe)
    code = runner.run_logged(runner.train_command(recipe, overrides=overrides), env, log, cwd=out, echo=False)
    if code != 0 or not run_is_done(run_dir, {"seed": overrides["seed"]} if "seed" in overrides else None):
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"axolotl train {recipe.name} -> {run_dir} failed (exit {code}); full log: {log}\n{tail}")


def lambda_recipe(out: Path, lam: float) -> Path:
    """recipes/reproduce/dpop.yml with dpop_lambda set: axolotl's CLI has no flag for plugin fields (an unknown
    ``--dpop-lambda`` is handed on to ``accelerate launch``, which rejects it), so λ goes into a derived copy."""
    source = RECIPE_DIR / "dpop.yml"
    path = out / "recipes" / f"dpop_lambda{lam:g}.yml"
    write_derived_recipe(
        path, derive_recipe(load_recipe(source), {"dpop_lambda": lam}), source, "only dpop_lambda differs"
    )
    return path


def run_label(method: str, lam: float | None) -> str:
    return "dpo" if method == "dpo" else f"dpop-l{lam:g}"


# ------------------------------------------------------------------------------------------ evaluation


def parse_answer(text: str) -> str | None:
    match = ANSWER_RE.search(text)
    return match.group(1).replace(",", "") if match else None


def greedy_exact_match(model_dir: Path, problems: list[dict], max_new_tokens: int = 160) -> float:
    """Fraction of problems whose greedy solution ends with ``The answer is: <the right number>``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(
        [chatml_prompt(p["query"]) for p in problems], return_tensors="pt", padding=True, add_special_tokens=False
    )
    with torch.inference_mode():
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(parse_answer(t) == p["answer"] for t, p in zip(texts, problems)) / len(problems)


def row_from_stats(method: str, lam: float | None, seed: int | None, stats: dict, exact: float) -> dict:
    b = stats["buckets"]["chosen"]
    return {
        "method": "SFT (reference)" if method == "sft" else ("DPO" if method == "dpo" else f"DPOP λ={lam:g}"),
        "lambda": lam,
        "seed": seed,
        "d_chosen": stats["chosen_total_delta_mean"],
        "d_rejected": stats["rejected_total_delta_mean"],
        "d_chosen_before": b["before"]["mean_delta_per_token"],
        "d_chosen_at": b["at"]["mean_delta_per_token"],
        "d_chosen_after": b["after"]["mean_delta_per_token"],
        "d_rejected_after": stats["buckets"]["rejected"]["after"]["mean_delta_per_token"],
        "reward_accuracy": stats["reward_accuracy"],
        "exact_match": exact,
    }


COLUMNS = [
    ("method", "method"),
    ("seed", "seed"),
    ("Δ log p chosen", "d_chosen"),
    ("Δ log p rejected", "d_rejected"),
    ("Δ/token chosen before k", "d_chosen_before"),
    ("at k", "d_chosen_at"),
    ("after k", "d_chosen_after"),
    ("Δ/token rejected after k", "d_rejected_after"),
    ("reward acc", "reward_accuracy"),
    ("exact match", "exact_match"),
]


PER_TOKEN_KEYS = {"d_chosen_before", "d_chosen_at", "d_chosen_after", "d_rejected_after"}


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "–"
    if key in ("reward_accuracy", "exact_match"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:+.4f}" if key in PER_TOKEN_KEYS else f"{value:+.3f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), k) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def summary_rows(rows: list[dict]) -> list[dict]:
    """Mean over seeds per method (the lines a reader checks first)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows if r["seed"] is not None):
        group = [r for r in rows if r["method"] == method]
        mean = {
            k: sum(r[k] for r in group) / len(group) for _, k in COLUMNS[2:] if all(r[k] is not None for r in group)
        }
        out.append({"method": method, "seed": f"mean of {len(group)}", **mean})
    return out


# ------------------------------------------------------------------------------------------------ main


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def reproduce(
    out: Path,
    seeds: list[int],
    quick: bool = False,
    lambdas: tuple[float, ...] = LAMBDAS,
    jobs: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Run everything (see module doc); returns the results dict also written to ``out/results.json``."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):  # see axolotl_train()
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    progress = Progress()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    if quick:
        lambdas = QUICK_LAMBDAS
        overrides = {**QUICK_OVERRIDES, **overrides}

    info = prepare_data(out)
    progress(f"data: {info['train_pairs']} training pairs, {info['heldout_pairs']} held-out pairs -> {out / 'data'}")

    base = out / "base-model"
    if not (base / "config.json").is_file():
        from smaug.training.tiny_model import build_tiny_llama

        build_tiny_llama(base, **MODEL)
    progress(f"base model: tiny random Llama {MODEL} -> {base}")

    sft = out / "runs" / "sft"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    sft_over = {k[4:]: v for k, v in overrides.items() if k.startswith("sft_")}
    if run_is_done(sft, {"max_steps": sft_over.get("max_steps", recipe_value("sft", "max_steps"))}):
        progress(f"SFT: reusing {sft}")
    else:
        axolotl_train(
            RECIPE_DIR / "sft.yml", out, sft, {"base_model": base, "output_dir": sft, **sft_over}, logs / "sft.log"
        )
        progress(f"SFT: axolotl train {RECIPE_DIR.name}/sft.yml -> {sft}")

    pref_over = {k[5:]: v for k, v in overrides.items() if k.startswith("pref_")}
    if "max_steps" in pref_over:
        pref_over.setdefault("save_steps", pref_over["max_steps"])
    runs: list[tuple[str, float | None, int, Path]] = []
    pending = []
    for seed in seeds:
        for method, lam in [("dpo", None)] + [("dpop", x) for x in lambdas]:
            run_dir = out / "runs" / f"{run_label(method, lam)}-s{seed}"
            runs.append((method, lam, seed, run_dir))
            expect = {"seed": seed, "max_steps": pref_over.get("max_steps", recipe_value(method, "max_steps"))}
            if lam is not None:
                expect["dpop_lambda"] = lam
            if run_is_done(run_dir, expect, parent=sft):
                progress(f"{run_label(method, lam)} seed {seed}: reusing {run_dir}")
                continue
            recipe = RECIPE_DIR / "dpo.yml" if method == "dpo" else lambda_recipe(out, lam)
            pending.append((method, lam, seed, run_dir, recipe))

    # The preference runs are independent: run as many at once as there are cores, one thread each. The models
    # are tiny, so one process per core beats one process using every core (measured on 2 cores: 8 runs in
    # about half the time).
    workers = max(1, min(jobs or os.cpu_count() or 1, len(pending)))

    def train(job) -> None:
        method, lam, seed, run_dir, recipe = job
        axolotl_train(
            recipe,
            out,
            run_dir,
            {"base_model": sft, "output_dir": run_dir, "seed": seed, **pref_over},
            logs / f"{run_dir.name}.log",
            original_recipe=RECIPE_DIR / f"{method}.yml",
            threads=max(1, (os.cpu_count() or 1) // workers),
        )
        progress(f"{run_label(method, lam)} seed {seed}: axolotl train -> {run_dir}")

    if pending:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(train, job) for job in pending]:
                future.result()  # re-raises the first failure, with its log's tail

    results = evaluate(out, sft, runs, progress)
    results.update(
        {
            "data": info,
            "model": MODEL,
            "seeds": list(seeds),
            "lambdas": list(lambdas),
            "quick": quick,
            "overrides": {k: str(v) for k, v in overrides.items()},
            "recipes": {n: str(RECIPE_DIR / f"{n}.yml") for n in ("sft", "dpo", "dpop")},
            "wall_seconds": round(time.monotonic() - progress.start, 1),
        }
    )
    write_json(out / "results.json", results)
    md = render_markdown(results)
    write_text(out / "results.md", md)
    print(md)
    progress(f"done: {out / 'results.md'}, results.json, positional.png, training.png")
    return results


def evaluate(out: Path, sft: Path, runs, progress) -> dict:
    from smaug.data.io import load_pairs
    from smaug.evaluation.logprobs import analyse_pairs
    from smaug.evaluation.plots import plot_positional, plot_training

    pairs = load_pairs(out / "data" / "pairs_heldout.jsonl")
    problems = [json.loads(line) for line in (out / "data" / "heldout_problems.jsonl").read_text().splitlines()]
    analysis = analyse_pairs(
        [str(r[3]) for r in runs], str(sft), pairs, fmt="chatml", dtype="float32", device="cpu", batch_size=32
    )
    progress(f"log-probs: {len(runs)} runs vs the SFT reference on {len(pairs)} held-out pairs")
    ref_exact = greedy_exact_match(sft, problems)
    rows = [
        {
            "method": "SFT (reference)",
            "lambda": None,
            "seed": None,
            "d_chosen": 0.0,
            "d_rejected": 0.0,
            "d_chosen_before": 0.0,
            "d_chosen_at": 0.0,
            "d_chosen_after": 0.0,
            "d_rejected_after": 0.0,
            "reward_accuracy": None,
            "exact_match": ref_exact,
        }
    ]
    for method, lam, seed, run_dir in runs:
        stats = analysis["models"][str(run_dir)]
        rows.append(row_from_stats(method, lam, seed, stats, greedy_exact_match(run_dir, problems)))
    progress(f"greedy exact match: {len(runs) + 1} models on {len(problems)} held-out problems")

    # Figure 4: one seed, every method; Figure 5: DPO vs DPOP training curves of that seed.
    first_seed = runs[0][2]
    fig4 = {
        **analysis,
        "models": {run_label(m, lam): analysis["models"][str(d)] for m, lam, s, d in runs if s == first_seed},
    }
    fig4["reference"] = "SFT"
    plot_positional(fig4, out / "positional.png")
    plot_training({run_label(m, lam): d for m, lam, s, d in runs if s == first_seed}, out / "training.png")
    progress(f"plots: {out / 'positional.png'}, {out / 'training.png'} (seed {first_seed})")
    return {
        "rows": rows,
        "summary": summary_rows(rows),
        "reference_stats": analysis["reference_stats"],
        "n_heldout_pairs": len(pairs),
        "n_heldout_problems": len(problems),
        "versions": analysis["versions"],
        "logprobs": {str(d.relative_to(out)): analysis["models"][str(d)]["buckets"] for *_, d in runs},
    }


def render_markdown(results: dict) -> str:
    ref = results["reference_stats"]
    intro = (
        f"Reference = SFT model; held-out pairs: {results['n_heldout_pairs']} (reference mean log p: chosen "
        f"{ref['chosen_logp_total_mean']:.2f}, rejected {ref['rejected_logp_total_mean']:.2f}). Δ = model − "
        "reference, sequence sums averaged over pairs; per-token columns are means over tokens before / at / "
        "after the first differing token k. Exact match: greedy `The answer is: N` on "
        f"{results['n_heldout_problems']} held-out problems."
    )
    return "\n".join(
        [
            "# DPO vs DPOP on low edit-distance pairs (`smaug showcase reproduce`)",
            "",
            intro,
            "",
            markdown_table(results["rows"]),
            "",
            "Mean over seeds:",
            "",
            markdown_table(results["summary"]),
            "",
        ]
    )
