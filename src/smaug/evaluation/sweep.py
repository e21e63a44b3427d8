"""`smaug eval sweep CHAIN`: every stage's base model, kept checkpoints and final model scored with a suite and,
given held-out pairs, by their log-probs; each result cached by checkpoint, so a killed sweep resumes where it
stopped. The points go to sweep.json, from which `smaug.evaluation.figures` draws the paper's Figures 2-6."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_json
from smaug.common.errors import UserError
from smaug.common.paths import RESULTS_DIR, eval_dir, model_slug

MAX_PAIRS = 900  # the paper's Figure 4: 900 randomly sampled preferred completions
DATASETS = {"metamath": "MetaMath", "arc": "ARC"}  # the paper's panel names, found in a stage's data path


def stage_labels(recipe: dict[str, Any]) -> dict[str, Any]:
    """What a figure calls a stage: its loss, dataset, β, λ and seed, read from its recipe."""
    rl, types = recipe.get("rl"), recipe.get("dpo_loss_type") or []
    loss = {None: "SFT", "dpop": "DPOP", "slic": "SLiC", "ipo": "IPO"}.get(rl)
    loss = loss or ("IPO" if "ipo" in types else "SLiC (TRL hinge)" if "hinge" in types else str(rl).upper())
    path = str(recipe["datasets"][0]["path"])
    dataset = next((v for k, v in DATASETS.items() if re.search(rf"(?<![a-z]){k}(?![a-z])", path.lower())), None)
    return {
        "loss": loss,
        "dataset": dataset or Path(path).stem,
        "beta": recipe.get("rl_beta") if rl else None,
        "lambda": recipe.get("dpop_lambda") if rl == "dpop" else None,
        "seed": recipe.get("seed"),
    }


def stage_points(stage) -> dict[int, str]:
    """{step: model} of a chain stage: its base model at 0, each complete checkpoint, and its final model once the
    stage is done (when no checkpoint holds the last step). A LoRA stage's checkpoints are adapters: only its
    merged final model is scored."""
    from smaug.training.checkpoints import complete_checkpoints, trainer_state

    states = {path: trainer_state(path) for path in complete_checkpoints(stage.output_dir)}
    points = {0: str(stage.base_path or stage.recipe["base_model"])}
    points |= {} if stage.merge_lora else {state.global_step: str(path) for path, state in states.items()}
    final = max((state.max_steps for state in states.values()), default=stage.recipe.get("max_steps") or 0)
    if stage.marker.is_file() and (final not in points or stage.merge_lora):
        points[final] = str(stage.output_dir / "merged" if stage.merge_lora else stage.output_dir)
    return dict(sorted(points.items()))


def _identity(model: str) -> str:
    """The harness's revision of the model and, for a checkpoint, its trainer_state.json: checkpoint-N of a
    retrained stage is another model in the same folder."""
    from smaug.evaluation.harness import resolve_model

    digest = hashlib.sha256(str(resolve_model(model).revision).encode())
    state = Path(model) / "trainer_state.json"
    digest.update(state.read_bytes() if state.is_file() else b"")
    return digest.hexdigest()[:16]


def _point(model: str, suite: str, pairs: list[dict] | None, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The suite's average for ``model`` and the log-probs of ``pairs`` (`logprobs.model_profile`). Reused while
    its record is of this very model and its summary is whole; otherwise scored now and recorded."""
    from smaug.evaluation.harness import evaluate
    from smaug.evaluation.logprobs import model_profile
    from smaug.evaluation.summary import load_summary

    key = hashlib.sha256(json.dumps([suite, pairs, options], sort_keys=True, default=str).encode()).hexdigest()
    record_file, identity = out / "points" / f"{model_slug(model)}-{key[:12]}.json", _identity(model)
    summary_file = eval_dir(model, suite, options["results_root"]) / "summary.json"
    try:
        record = json.loads(record_file.read_text())
        if record["identity"] == identity and load_summary(summary_file).average == record["score"]:
            print(f"  {suite}: {100 * record['score']:.1f} (recorded in {record_file})")
            return record
    except (OSError, ValueError, KeyError, UserError):  # not scored yet, or a summary no longer whole
        pass
    scoring = {k: options[k] for k in ("results_root", "batch_size", "dtype", "device", "limit")}
    record = {"identity": identity, "score": load_summary(evaluate(model, suite, **scoring) / "summary.json").average}
    print(f"  {suite}: {100 * record['score']:.1f}")
    if pairs:
        profiling = {k: options[k] for k in ("fmt", "max_length", "batch_size", "dtype", "device")}
        record |= model_profile(model, pairs, **profiling)
    write_json(record_file, record)
    return record


def sweep(
    chain_name: str,
    suites: dict[str, str],
    pairs: dict[str, Path] | None = None,
    *,
    output_root: Path | None = None,
    results_root: Path | None = None,
    out: Path | None = None,
    batch_size: int = 8,
    dtype: str | None = None,
    device: str | None = None,
    limit: int | float | None = None,
    fmt: str = "chatml",
    max_pairs: int = MAX_PAIRS,
) -> dict[str, Any]:
    """Score every point of the chain (``suites`` and ``pairs`` by dataset; the key "" serves any dataset) and
    write sweep.json into ``out`` (default results/figures/<chain>/)."""
    from smaug.common.files import check_output_folder
    from smaug.data.io import load_pairs
    from smaug.evaluation.models import resolve_device
    from smaug.evaluation.suites import get_suite
    from smaug.training.chains import plan_chain

    chain, pairs = plan_chain(chain_name, output_root), pairs or {}
    out = check_output_folder(out or (results_root or RESULTS_DIR) / "figures" / chain.name, "--out")
    stages = [(stage, stage_labels(stage.recipe)) for stage in chain.stages]
    datasets = sorted({labels["dataset"] for _, labels in stages})
    for given, flag in ((suites, "--suite"), (pairs, "--pairs")):
        unknown = sorted(set(given) - set(datasets) - {""})
        if unknown:
            trains = f"chain {chain.name!r} trains on {', '.join(datasets)}"
            raise UserError(f"{flag} {unknown[0]}=...: {trains}; name one of those, or give it for every dataset")
    missing = [name for name in datasets if name not in suites and "" not in suites]
    if missing:
        raise UserError(f"no suite for the {missing[0]} runs of chain {chain.name!r}: add --suite {missing[0]}=SUITE")
    for suite in set(suites.values()):
        get_suite(suite)  # a typo fails here, before any model loads
    device = resolve_device(device)
    sampled = {}
    for name, path in pairs.items():
        rows = load_pairs(path)
        sampled[name] = random.Random(0).sample(rows, min(max_pairs, len(rows)))  # the same for every checkpoint
    options = dict(results_root=results_root, batch_size=batch_size, dtype=dtype, device=device, limit=limit, fmt=fmt)
    points = []
    for stage, labels in stages:
        suite = suites.get(labels["dataset"], suites.get(""))
        subset = sampled.get(labels["dataset"], sampled.get(""))
        for step, model in stage_points(stage).items():
            print(f"{stage.name} step {step}: {model}", flush=True)
            point = {"stage": stage.name, **labels, "step": step, "model": model, "suite": suite}
            point |= _point(model, suite, subset, out, options | {"max_length": stage.recipe.get("sequence_len")})
            points.append(point)
    result = {"chain": chain.name, "folder": str(out), "suites": suites, "points": points}
    write_json(out / "sweep.json", result | {"pairs": {k: str(v) for k, v in pairs.items()}})
    return result


def per_dataset(text: str) -> tuple[str, str]:
    """argparse type of `[DATASET=]VALUE`: ("", VALUE) when no dataset is named."""
    name, sep, value = text.partition("=")
    if sep and not (name and value):
        raise argparse.ArgumentTypeError(f"{text!r}: write DATASET=VALUE, or VALUE alone for every dataset")
    return (name, value) if sep else ("", text)


def run_cli(args: argparse.Namespace) -> int:
    from smaug.evaluation.figures import draw_figures

    result = sweep(
        args.chain,
        dict(args.suite),
        {name: Path(path) for name, path in args.pairs},
        **{k: getattr(args, k) for k in ("output_root", "results_root", "out", "batch_size", "dtype", "device")},
        **{k: getattr(args, k) for k in ("limit", "fmt", "max_pairs")},
    )
    for path in draw_figures(result, Path(result["folder"])):
        print(f"wrote {path}")
    return 0
