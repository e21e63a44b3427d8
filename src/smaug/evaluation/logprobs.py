"""The paper's log-prob diagnostic: how a trained model moves the log-probs of preferred and dispreferred
completions relative to a reference model, token by token, around the first token where they differ.

DPO's failure mode (Smaug paper, Sec. 3 and Figure 4) shows up here: on pairs whose completions differ in only
a few tokens, DPO can lower the log-prob of the *chosen* completion too (Δ < 0 after the first differing
token) while still increasing the margin. DPOP's penalty keeps Δchosen ≥ 0.

Tokenisation follows TRL's DPOTrainer exactly (so the numbers are those the trainer optimises):
``prompt_ids = tok(prompt)``, ``full = tok(prompt + completion)``, ``completion_ids = full[len(prompt_ids):]``,
with the tokenizer's EOS text appended to a completion that does not already end with it. The prompt and
completion strings come from one of three formats:

* ``chatml`` (default) — axolotl's ``chatml.prompt_pairs`` (what our recipes train with):
  prompt = ``[<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``,
  completion = ``{chosen}<|im_end|>``.
* ``chat_template`` — the model's own chat template (``[system,] user`` messages, generation prompt added),
  completion = ``{chosen}`` + EOS.
* ``plain`` — ``prompt + chosen`` concatenated as they are (+ EOS, as TRL does for plain text).

For every pair, Δ(token) = log p_model(token | prefix) − log p_ref(token | prefix) over completion tokens.
``k`` is the index (within the completion) of the first token where the chosen and rejected token ids differ
(if one is a prefix of the other, the shorter length; pairs with identical completions have no ``k`` and are
left out of the position buckets). Buckets: *before* (index < k, identical tokens in both completions),
*at* (index == k) and *after* (index > k); bucket values are means over all tokens in the bucket, pooled
across pairs. Totals are the sum of Δ over a completion; reward accuracy is the fraction of pairs with
Δchosen_total − Δrejected_total > 0 (the sign of the implicit DPO reward margin, any β).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from smaug.atomic import atomic_write, write_text_atomic
from smaug.errors import UserError
from smaug.jsonl import read_jsonl

FORMATS = ("chatml", "chat_template", "plain")
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------------------------- inputs


def load_pairs(path: str | Path, limit: int | None = None) -> list[dict]:
    """Read prompt/chosen/rejected rows from JSONL or Parquet; every bad row is named in the error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pair file not found; pass a JSONL or Parquet file with columns prompt, chosen, rejected")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path, "pair")
    else:
        raise UserError(f"{path}: unknown pair file type {path.suffix!r}; use .jsonl or .parquet")
    if not rows:
        raise UserError(f"{path}: no pairs in the file")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i} is not an object with prompt/chosen/rejected")
        for column in REQUIRED_COLUMNS:
            value = row.get(column)
            if not isinstance(value, str) or not value:
                raise UserError(
                    f"{path}: row {i}: column {column!r} is missing or not a non-empty string; "
                    "every row needs text in prompt, chosen and rejected"
                )
    return rows[:limit] if limit else rows


def check_model_ref(model: str, what: str = "model") -> None:
    """Fail before loading anything when a model is neither a local folder nor (online) a Hub id."""
    if Path(model).expanduser().is_dir():
        return
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None and not model.startswith(".")
    if not looks_like_hub_id:
        raise UserError(f"{what} {model!r}: no such folder; pass a local model folder or a Hub id (org/name)")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return  # in the local Hub cache: loads offline
        raise UserError(
            f"{what} {model!r}: not a local folder and HF_HUB_OFFLINE is set; download it first or pass a local path"
        )


def format_pair(row: dict, fmt: str, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) strings exactly as the trainer sees them for format ``fmt``."""
    eos = tokenizer.eos_token or ""
    system = row.get("system") or None
    if fmt == "chatml":  # axolotl chatml.prompt_pairs
        prompt = f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        if system:
            prompt = f"<|im_start|>system\n{system}<|im_end|>\n" + prompt
        chosen, rejected = f"{row['chosen']}<|im_end|>", f"{row['rejected']}<|im_end|>"
    elif fmt == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("--format chat_template: the tokenizer has no chat template; use --format chatml or plain")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": row["prompt"]}
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chosen, rejected = row["chosen"], row["rejected"]
    elif fmt == "plain":
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # TRL appends EOS to string completions that lack it.
    if eos and not chosen.endswith(eos):
        chosen += eos
    if eos and not rejected.endswith(eos):
        rejected += eos
    return prompt, chosen, rejected


def _tokenize(tokenizer, text: str) -> list[int]:
    # A rendered chat template may already start with BOS: do not add a second one.
    add_special = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; the shorter length if one is a prefix of the other; None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def encode_pairs(tokenizer, pairs: list[dict], fmt: str = "chatml", max_length: int | None = None) -> list[dict]:
    """TRL-style token ids per pair: prompt_ids, chosen_ids, rejected_ids (completions only) and first_diff."""
    encoded = []
    for i, row in enumerate(pairs, 1):
        prompt, chosen, rejected = format_pair(row, fmt, tokenizer)
        prompt_ids = _tokenize(tokenizer, prompt)
        chosen_ids = _tokenize(tokenizer, prompt + chosen)[len(prompt_ids) :]
        rejected_ids = _tokenize(tokenizer, prompt + rejected)[len(prompt_ids) :]
        if max_length:
            room = max_length - len(prompt_ids)
            if room < 1:
                raise UserError(
                    f"pair {i}: the prompt alone is {len(prompt_ids)} tokens, over --max-length {max_length}; "
                    "raise --max-length or drop the pair"
                )
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
        if not chosen_ids or not rejected_ids:
            raise UserError(f"pair {i}: a completion tokenizes to nothing; check the chosen/rejected text")
        encoded.append(
            {
                "prompt_ids": prompt_ids,
                "chosen_ids": chosen_ids,
                "rejected_ids": rejected_ids,
                "first_diff": first_difference(chosen_ids, rejected_ids),
            }
        )
    return encoded


# ----------------------------------------------------------------------------------------- computing


def resolve_device(device: str | None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(path: str, dtype: str = "bfloat16", device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise UserError(f"--dtype {dtype!r}: choose bfloat16, float16 or float32")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(resolve_device(device)).eval()


def token_logprobs(
    model, sequences: list[tuple[list[int], int]], batch_size: int = 8, pad_id: int = 0, desc: str = "log-probs"
) -> list[list[float]]:
    """For each (input_ids, start): log p(input_ids[t] | input_ids[:t]) for t >= start (start >= 1).

    Sequences are sorted by length and right-padded in batches (causal attention: padding on the right does
    not change real positions); log-softmax runs in float32 on the scored rows only, to bound memory."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]), reverse=True)
    results: list[list[float]] = [[] for _ in sequences]
    with torch.inference_mode():
        for offset in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch = order[offset : offset + batch_size]
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = sequences[i][0]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(batch):
                seq, start = sequences[i]
                if start < 1:
                    raise ValueError("the first token has no prediction; start must be >= 1")
                scores = logits[row, start - 1 : len(seq) - 1].float().log_softmax(-1)
                targets = torch.tensor(seq[start:], device=scores.device)
                results[i] = scores.gather(-1, targets[:, None])[:, 0].cpu().tolist()
    return results


def _pair_logprobs(model, encoded: list[dict], batch_size: int, pad_id: int, desc: str):
    seqs = []
    for enc in encoded:
        n_prompt = len(enc["prompt_ids"])
        seqs.append((enc["prompt_ids"] + enc["chosen_ids"], n_prompt))
        seqs.append((enc["prompt_ids"] + enc["rejected_ids"], n_prompt))
    flat = token_logprobs(model, seqs, batch_size=batch_size, pad_id=pad_id, desc=desc)
    return flat[0::2], flat[1::2]


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarise(encoded, ref_chosen, ref_rejected, chosen, rejected, window: int = 20) -> dict:
    """Per-model statistics from per-token log-probs of the model and of the reference (see module doc)."""
    n = len(encoded)
    d_chosen = [[m - r for m, r in zip(cm, cr)] for cm, cr in zip(chosen, ref_chosen)]
    d_rejected = [[m - r for m, r in zip(rm, rr)] for rm, rr in zip(rejected, ref_rejected)]
    chosen_total = [sum(d) for d in d_chosen]
    rejected_total = [sum(d) for d in d_rejected]
    buckets: dict[str, dict[str, list[float]]] = {
        side: {"before": [], "at": [], "after": []} for side in ("chosen", "rejected")
    }
    positional: dict[str, dict[int, list[float]]] = {"chosen": {}, "rejected": {}}
    for enc, dc, dr in zip(encoded, d_chosen, d_rejected):
        k = enc["first_diff"]
        if k is None:
            continue
        for side, deltas in (("chosen", dc), ("rejected", dr)):
            for t, delta in enumerate(deltas):
                buckets[side]["before" if t < k else "at" if t == k else "after"].append(delta)
                if -window <= t - k <= window:
                    positional[side].setdefault(t - k, []).append(delta)
    margins = [c - r for c, r in zip(chosen_total, rejected_total)]
    return {
        "n_pairs": n,
        "n_pairs_without_difference": sum(enc["first_diff"] is None for enc in encoded),
        "chosen_total_delta_mean": _mean(chosen_total),
        "rejected_total_delta_mean": _mean(rejected_total),
        "chosen_per_token_delta_mean": _mean(_mean(d) for d in d_chosen),
        "rejected_per_token_delta_mean": _mean(_mean(d) for d in d_rejected),
        "chosen_logp_total_mean": _mean(sum(x) for x in chosen),
        "rejected_logp_total_mean": _mean(sum(x) for x in rejected),
        "reward_accuracy": sum(m > 0 for m in margins) / n if n else None,
        "buckets": {
            side: {name: {"mean_delta_per_token": _mean(v), "n_tokens": len(v)} for name, v in parts.items()}
            for side, parts in buckets.items()
        },
        "positional": {
            side: {
                "position": sorted(points),
                "mean_delta": [_mean(points[p]) for p in sorted(points)],
                "n_tokens": [len(points[p]) for p in sorted(points)],
            }
            for side, points in positional.items()
        },
        "per_pair": {
            "first_diff": [enc["first_diff"] for enc in encoded],
            "n_chosen_tokens": [len(enc["chosen_ids"]) for enc in encoded],
            "n_rejected_tokens": [len(enc["rejected_ids"]) for enc in encoded],
            "chosen_total_delta": chosen_total,
            "rejected_total_delta": rejected_total,
            "chosen_logp_total": [sum(x) for x in chosen],
            "rejected_logp_total": [sum(x) for x in rejected],
        },
    }


def analyse_pairs(
    model_paths: list[str],
    reference: str,
    pairs: list[dict],
    fmt: str = "chatml",
    batch_size: int = 8,
    dtype: str = "bfloat16",
    device: str | None = None,
    max_length: int | None = None,
    window: int = 20,
    per_token: bool = False,
) -> dict:
    """Δ log-probs of each model vs ``reference`` on ``pairs`` (dicts with prompt/chosen/rejected[/system]).

    The reference's log-probs are computed once; models are loaded one at a time and freed after use.
    ``per_token=True`` adds per-pair per-token log-probs (model and reference) to the result."""
    from transformers import AutoTokenizer

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not model_paths:
        raise UserError("no models given; pass one or more with --models")
    check_model_ref(reference, "reference")
    for path in model_paths:
        check_model_ref(path)

    tokenizer = AutoTokenizer.from_pretrained(reference)
    encoded = encode_pairs(tokenizer, pairs, fmt, max_length)
    # Δ only means something if every model tokenizes the pairs the same way as the reference.
    for path in model_paths:
        other = AutoTokenizer.from_pretrained(path)
        if encode_pairs(other, pairs[:1], fmt, max_length) != encoded[:1]:
            raise UserError(
                f"model {path!r} tokenizes pair 1 differently from reference {reference!r}; "
                "log-prob deltas need the same tokenizer"
            )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    ref_model = load_causal_lm(reference, dtype, device)
    ref_chosen, ref_rejected = _pair_logprobs(ref_model, encoded, batch_size, pad_id, "reference")
    del ref_model

    result: dict[str, Any] = {
        "reference": reference,
        "format": fmt,
        "dtype": dtype,
        "n_pairs": len(encoded),
        "window": window,
        "reference_stats": {
            "chosen_logp_total_mean": _mean(sum(x) for x in ref_chosen),
            "rejected_logp_total_mean": _mean(sum(x) for x in ref_rejected),
        },
        "models": {},
        "versions": _versions(),
    }
    for path in model_paths:
        model = load_causal_lm(path, dtype, device)
        chosen, rejected = _pair_logprobs(model, encoded, batch_size, pad_id, Path(path).name or path)
        del model
        stats = summarise(encoded, ref_chosen, ref_rejected, chosen, rejected, window)
        if per_token:
            stats["per_pair"].update(
                chosen_logps=chosen, rejected_logps=rejected, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected
            )
        result["models"][path] = stats
    return result


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("smaug-dpop", "transformers", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------- outputs


def write_json_atomic(data: Any, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _save_figure(fig, out_png: str | Path) -> Path:
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(model: str) -> str:
    path = Path(model)
    return path.name if path.is_dir() else model


def plot_positional(result: dict, out_png: str | Path) -> Path:
    """Figure 4 style: mean Δ log-prob per token vs position relative to the first differing token."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model, stats) in enumerate(result["models"].items()):
        colour = colours[i % len(colours)]
        for side, style in (("chosen", "-"), ("rejected", "--")):
            curve = stats["positional"][side]
            ax.plot(curve["position"], curve["mean_delta"], style, color=colour, label=f"{_label(model)} {side}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("token position relative to the first differing token")
    ax.set_ylabel("Δ log-prob vs reference (per token)")
    ax.set_title(f"Log-prob change vs {_label(result['reference'])} ({result['n_pairs']} pairs)")
    ax.legend(fontsize=8)
    try:
        return _save_figure(fig, out_png)
    finally:
        plt.close(fig)


def find_trainer_state(path: str | Path) -> Path:
    """trainer_state.json itself, in a run folder, or in its latest ``checkpoint-N``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "trainer_state.json").is_file():
            return path / "trainer_state.json"
        checkpoints = sorted(
            (p for p in path.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
            key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1,
        )
        if checkpoints:
            return checkpoints[-1] / "trainer_state.json"
    raise UserError(
        f"{path}: no trainer_state.json here or in a checkpoint-N folder; pass a run's output dir or the file"
    )


TRAINING_KEYS = ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies", "dpop/penalty")


def read_training_log(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}`` from a trainer_state.json log_history (train entries; eval_ if no train)."""
    state_file = find_trainer_state(path)
    try:
        history = json.loads(state_file.read_text())["log_history"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{state_file}: not a trainer_state.json with a log_history ({err})") from None
    series: dict[str, tuple[list[int], list[float]]] = {}
    for prefix in ("", "eval_"):
        for entry in history:
            for key in TRAINING_KEYS + ("dpop/active_fraction",):
                value = entry.get(prefix + key)
                if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(entry["step"])
                    values.append(float(value))
        if "logps/chosen" in series:
            break
    if "logps/chosen" not in series or "logps/rejected" not in series:
        raise UserError(
            f"{state_file}: log_history has no logps/chosen and logps/rejected entries; "
            "is this a DPO/DPOP run (TRL logs them every logging_steps)?"
        )
    return series


def plot_training(runs: dict[str, str | Path], out_png: str | Path) -> Path:
    """Figure 5 style: chosen/rejected log-probs over training steps, one colour per run (e.g. DPO vs DPOP).

    A second panel shows the reward margin; a third the DPOP penalty when any run logged it."""
    if not runs:
        raise UserError("no runs given; pass one or more run folders (LABEL=PATH to name them)")
    logs = {label: read_training_log(path) for label, path in runs.items()}
    has_penalty = any("dpop/penalty" in series for series in logs.values())
    has_margin = any("rewards/margins" in series for series in logs.values())
    panels = ["logps"] + (["rewards/margins"] if has_margin else []) + (["dpop/penalty"] if has_penalty else [])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, series) in enumerate(logs.items()):
        colour = colours[i % len(colours)]
        for ax, panel in zip(axes[0], panels):
            if panel == "logps":
                for key, style in (("logps/chosen", "-"), ("logps/rejected", "--")):
                    steps, values = series[key]
                    ax.plot(steps, values, style, color=colour, label=f"{label} {key.split('/')[1]}")
            elif panel in series:
                steps, values = series[panel]
                ax.plot(steps, values, "-", color=colour, label=label)
    titles = {"logps": "sequence log-prob", "rewards/margins": "reward margin", "dpop/penalty": "DPOP penalty"}
    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("step")
        ax.set_title(titles[panel])
        ax.legend(fontsize=8)
    try:
        return _save_figure(fig, out_png)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "logprobs",
        help="chosen/rejected log-probs vs a reference, by position around the first differing token (paper Fig. 4)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", help="trained model folders or Hub ids")
    parser.add_argument("--reference", help="reference model (the DPO/DPOP starting point)")
    parser.add_argument("--pairs", type=Path, help="JSONL or Parquet with prompt, chosen, rejected [, system]")
    parser.add_argument("--out", type=Path, help="output folder for logprobs.json and logprobs.png")
    parser.add_argument("--format", choices=FORMATS, default="chatml", dest="fmt")
    parser.add_argument(
        "--chat-template", action="store_const", const="chat_template", dest="fmt", help="= --format chat_template"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, help="use only the first N pairs")
    parser.add_argument("--max-length", type=int, help="truncate prompt+completion to this many tokens")
    parser.add_argument("--window", type=int, default=20, help="positions either side of the first difference to plot")
    parser.add_argument("--per-token", action="store_true", help="also write every token's log-probs")
    parser.set_defaults(func=_run)

    sub = parser.add_subparsers(dest="logprobs_command")
    plot = sub.add_parser("plot-training", help="chosen/rejected log-probs over training steps (paper Fig. 5)")
    plot.add_argument("runs", nargs="+", help="run folder or trainer_state.json, optionally LABEL=PATH")
    plot.add_argument("--out", type=Path, required=True, dest="plot_out", help="PNG to write")
    plot.set_defaults(func=_run_plot_training)


def _run(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--models", args.models), ("--reference", args.reference),
                                        ("--pairs", args.pairs), ("--out", args.out)) if not value]
    if missing:
        raise UserError(f"smaug logprobs needs {', '.join(missing)} (or use `smaug logprobs plot-training`)")
    pairs = load_pairs(args.pairs, args.limit)
    result = analyse_pairs(
        args.models, args.reference, pairs, fmt=args.fmt, batch_size=args.batch_size, dtype=args.dtype,
        device=args.device, max_length=args.max_length, window=args.window, per_token=args.per_token,
    )
    result["pairs_file"] = str(args.pairs)
    json_path = write_json_atomic(result, args.out / "logprobs.json")
    png_path = plot_positional(result, args.out / "logprobs.png")
    for model, stats in result["models"].items():
        b = stats["buckets"]
        print(
            f"{model}: Δchosen {stats['chosen_total_delta_mean']:+.3f}  Δrejected {stats['rejected_total_delta_mean']:+.3f}"
            f"  reward acc {stats['reward_accuracy']:.3f}  Δ/token after first diff: chosen "
            f"{_fmt(b['chosen']['after']['mean_delta_per_token'])} rejected {_fmt(b['rejected']['after']['mean_delta_per_token'])}"
        )
    print(f"wrote {json_path} and {png_path}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def parse_runs(specs: list[str]) -> dict[str, str]:
    runs: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name or spec, spec
        if label in runs:
            raise UserError(f"run label {label!r} given twice; name runs LABEL=PATH")
        runs[label] = path
    return runs


def _run_plot_training(args: argparse.Namespace) -> int:
    out = plot_training(parse_runs(args.runs), args.plot_out)
    print(f"wrote {out}")
    return 0
