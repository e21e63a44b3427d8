"""`smaug showcase reproduce` (`make reproduce`): DPO's failure mode and DPOP's fix on low edit-distance pairs, on a CPU.

1. data: short two-step MetaMath-like problems, made into pairs by our MetaMath builder (rejected = the chosen
   solution with ONE intermediate result corrupted, the final answer untouched); 64 problems are held out.
2. a tiny random Llama with a byte-level tokenizer (one token per digit).
3. the stage chain `reproduce` (recipes/chains.yaml): SFT, then DPO and DPOP (λ = 50, 5, 500) from it, all with
   the same seed; `--quick` runs `reproduce-quick`, its first three stages. Finished stages are skipped.
4. Δ log-probs of each run against the SFT reference on the held-out pairs (`smaug.evaluation.logprobs`),
   greedy exact match of the held-out answers, results.md / results.json and the paper's Figures 4 and 5.

Hyperparameters live in recipes/reproduce/*.yml only."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_directory, write_json, write_jsonl, write_text
from smaug.common.chat import chatml_prompt
from smaug.common.errors import UserError
from smaug.common.paths import REPO_ROOT

CHAIN, QUICK_CHAIN = "reproduce", "reproduce-quick"
# The recipes read their data here: the chain's --output-root moves models, not data files.
DATA = REPO_ROOT / "outputs" / "reproduce" / "data"
N_PROBLEMS, N_HELDOUT, DATA_SEED = 3000, 64, 0  # enough pairs that no DPO run sees one twice
MODEL = {"hidden_size": 128, "num_layers": 2, "seed": 0}
DELTAS = ["d_chosen", "d_rejected", "d_chosen_before", "d_chosen_at", "d_chosen_after", "d_rejected_after"]
RATES = ["reward_accuracy", "exact_match"]
ANSWER_RE = re.compile(r"The answer is:\s*(-?[\d,]*\.?\d+)")


def prepare_data(folder: Path = DATA, n_problems: int = N_PROBLEMS, n_heldout: int = N_HELDOUT) -> dict[str, Any]:
    """pairs_train.jsonl, pairs_heldout.jsonl and sft.jsonl (the chosen solutions as chats) in ``folder``; the
    held-out problems (query, answer) under `heldout_problems`. Same bytes every time."""
    from smaug.data.io import write_pairs
    from smaug.data.metamath import build_metamath_pairs
    from smaug.data.synthetic import two_step_metamath_row

    seen: set[str] = set()
    rows = [two_step_metamath_row(i, DATA_SEED) for i in range(n_problems)]
    unique = [r for r in rows if not (r["query"] in seen or seen.add(r["query"]))]  # held-out queries never train
    heldout, train = unique[:n_heldout], unique[n_heldout:]
    # The strict rule (an intermediate result, never the final calculation): the failure mode this run shows.
    train_pairs, train_skips = build_metamath_pairs(train, seed=DATA_SEED, fallback=False)
    heldout_pairs, heldout_skips = build_metamath_pairs(heldout, seed=DATA_SEED, fallback=False)
    write_pairs(folder / "pairs_train.jsonl", train_pairs)
    write_pairs(folder / "pairs_heldout.jsonl", heldout_pairs)
    chats = (
        [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}] for p in train_pairs
    )
    write_jsonl(folder / "sft.jsonl", ({"messages": messages} for messages in chats))
    return {
        "problems": len(unique),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout_pairs),
        "skips": {"train": train_skips, "heldout": heldout_skips},
        "data_seed": DATA_SEED,
        "heldout_problems": [{"query": r["query"], "answer": r["answer"]} for r in heldout],
    }


def parse_answer(text: str) -> str | None:
    match = ANSWER_RE.search(text)
    return match.group(1).replace(",", "") if match else None


def greedy_exact_match(model_dir: Path, problems: list[dict], max_new_tokens: int = 160) -> float:
    """Fraction of problems whose greedy solution ends with ``The answer is: <the right number>``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [chatml_prompt(p["query"]) for p in problems]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
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


def label(recipe: dict[str, Any]) -> str:
    return "DPO" if recipe["rl"] == "dpo" else f"DPOP λ={recipe['dpop_lambda']:g}"


# Δ = model - reference, sequence sums; the per-token columns are means before / at / after the first differing token k.
HEADERS = "method|seed|Δ log p chosen|Δ log p rejected|Δ/token chosen before k|at k|after k|Δ/token rejected after k"
COLUMNS = list(zip(HEADERS.split("|") + ["reward acc", "exact match"], ["method", "seed", *DELTAS, *RATES]))


def result_row(method: str, seed: int | None, stats: dict | None, exact: float) -> dict[str, Any]:
    """One table row; ``stats`` of `analyse_pairs` for a model, None for the reference itself (all Δ are 0)."""
    deltas = dict.fromkeys(DELTAS, 0.0)
    if stats is not None:
        chosen, rejected = stats["buckets"]["chosen"], stats["buckets"]["rejected"]
        deltas = {
            "d_chosen": stats["chosen_total_delta_mean"],
            "d_rejected": stats["rejected_total_delta_mean"],
            **{f"d_chosen_{k}": chosen[k]["mean_delta_per_token"] for k in ("before", "at", "after")},
            "d_rejected_after": rejected["after"]["mean_delta_per_token"],
        }
    accuracy = stats["reward_accuracy"] if stats else None
    return {"method": method, "seed": seed, **deltas, "reward_accuracy": accuracy, "exact_match": exact}


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "–"
    if key in RATES:
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:+.4f}" if key.endswith(("before", "at", "after")) else f"{value:+.3f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(_cell(r.get(k), k) for _, k in COLUMNS) + " |" for r in rows])


def reproduce(output_root: Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Data, base model, the chain, then the analysis (module docstring); the results, also in results.json."""
    from smaug.training.chains import plan_chain, run_chain
    from smaug.training.tiny_model import build_tiny_llama

    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    chain = plan_chain(QUICK_CHAIN if quick else CHAIN, output_root)
    sft, *runs = chain.stages
    info = prepare_data()
    progress(f"data: {info['train_pairs']} training pairs, {info['heldout_pairs']} held-out pairs in {DATA}")
    if not (sft.base_path / "config.json").is_file():
        atomic_directory(sft.base_path, lambda tmp: build_tiny_llama(tmp, **MODEL))
    progress(f"base model: tiny random Llama {MODEL} in {sft.base_path}")
    code = run_chain(chain.name, output_root)
    if code:
        raise UserError(f"the chain {chain.name} stopped (exit {code}); its message above says what to do")
    progress(f"chain {chain.name}: {len(chain.stages)} stages done")

    from smaug.data.io import load_pairs
    from smaug.evaluation.logprobs import analyse_pairs
    from smaug.evaluation.plots import plot_positional, plot_training

    out = sft.output_dir.parent
    pairs, problems = load_pairs(DATA / "pairs_heldout.jsonl"), info.pop("heldout_problems")
    dirs = [str(stage.output_dir) for stage in runs]
    analysis = analyse_pairs(
        dirs, str(sft.output_dir), pairs, fmt="chatml", dtype="float32", device="cpu", batch_size=32
    )
    progress(f"log-probs: {len(runs)} runs vs the SFT reference on {len(pairs)} held-out pairs")
    rows = [result_row("SFT (reference)", None, None, greedy_exact_match(sft.output_dir, problems))]
    for stage, folder in zip(runs, dirs):
        exact = greedy_exact_match(stage.output_dir, problems)
        rows.append(result_row(label(stage.recipe), stage.recipe["seed"], analysis["models"][folder], exact))
    progress(f"greedy exact match: {len(rows)} models on {len(problems)} held-out problems")
    by_label = {label(stage.recipe): folder for stage, folder in zip(runs, dirs)}
    plot_positional(
        {**analysis, "models": {k: analysis["models"][d] for k, d in by_label.items()}, "reference": "SFT"},
        out / "positional.png",
    )
    plot_training(by_label, out / "training.png")
    ref = analysis["reference_stats"]
    results = {
        "rows": rows,
        "reference_stats": ref,
        "n_heldout_pairs": len(pairs),
        "n_heldout_problems": len(problems),
        "data": info,
        "model": MODEL,
        "chain": chain.name,
        "recipes": [str(stage.recipe_path.relative_to(REPO_ROOT)) for stage in chain.stages],
        "versions": analysis["versions"],
        "logprobs": {label(s.recipe): analysis["models"][d]["buckets"] for s, d in zip(runs, dirs)},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    write_json(out / "results.json", results)
    text = (
        "# DPO vs DPOP on low edit-distance pairs (`smaug showcase reproduce`)\n\n"
        f"Reference = SFT model; held-out pairs: {len(pairs)} (reference mean log p: chosen "
        f"{ref['chosen_logp_total_mean']:.2f}, rejected {ref['rejected_logp_total_mean']:.2f}). Δ = model − reference, "
        "sequence sums averaged over pairs; per-token columns are means over tokens before / at / after the first "
        f"differing token k. Exact match: greedy `The answer is: N` on {len(problems)} held-out problems.\n\n"
        + markdown_table(rows)
        + "\n"
    )
    write_text(out / "results.md", text)
    print(text)
    progress(f"done: {out / 'results.md'}, results.json, positional.png (Figure 4), training.png (Figure 5)")
    return results
