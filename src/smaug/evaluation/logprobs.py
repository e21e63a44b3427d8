"""How a trained model moves the log-probs of chosen and rejected completions against a reference model, token
by token around the first token where they differ (DPO can lower Δchosen after it; DPOP keeps Δchosen >= 0), and
each model's own log-probs there (the Smaug paper's Figure 4, right).

Tokenised as TRL's DPOTrainer does: prompt_ids = tok(prompt), completion_ids = tok(prompt + completion) after
the prompt's tokens, EOS appended to a completion lacking it. Formats: `chatml` (axolotl's
`chatml.prompt_pairs`, what the recipes train with), `chat_template` (the model's own), `plain`.
Δ(token) = log p_model − log p_ref; k = the first completion index where chosen and rejected differ (pairs
with identical completions are left out of the buckets); buckets before / at / after k pool tokens over
pairs; reward accuracy = the fraction of pairs with Δchosen_total > Δrejected_total."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from axolotl_dpop.provenance import package_versions
from smaug.common.chat import IM_END, chatml_prompt
from smaug.common.errors import UserError
from smaug.common.hub import check_model_ref
from smaug.evaluation.models import default_dtype, load_causal_lm, token_logprobs

FORMATS = ("chatml", "chat_template", "plain")


def format_pair(row: dict, fmt: str, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) exactly as the trainer sees them in format ``fmt``."""
    system = row.get("system") or None
    chosen, rejected = row["chosen"], row["rejected"]
    if fmt == "chatml":
        prompt, chosen, rejected = chatml_prompt(row["prompt"], system), chosen + IM_END, rejected + IM_END
    elif fmt == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("--format chat_template: the tokenizer has no chat template; use --format chatml or plain")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": row["prompt"]})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        prompt = row["prompt"]
    eos = tokenizer.eos_token or ""  # TRL appends EOS to string completions that lack it
    return prompt, *(text if text.endswith(eos) else text + eos for text in (chosen, rejected))


def _tokenize(tokenizer, text: str) -> list[int]:
    bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)  # a rendered template wrote it
    return tokenizer(text, add_special_tokens=not bos)["input_ids"]


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; the shorter length if one is a prefix of the other; None if equal."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def encode_pairs(tokenizer, pairs: list[dict], fmt: str = "chatml", max_length: int | None = None) -> list[dict]:
    """TRL-style token ids per pair: prompt_ids, chosen_ids, rejected_ids (completions only) and first_diff."""
    encoded = []
    for i, row in enumerate(pairs, 1):
        prompt, chosen, rejected = format_pair(row, fmt, tokenizer)
        prompt_ids = _tokenize(tokenizer, prompt)
        room = (max_length or 10**12) - len(prompt_ids)
        if room < 1:
            raise UserError(f"pair {i}: the prompt alone is {len(prompt_ids)} tokens, over --max-length {max_length}")
        chosen_ids, rejected_ids = (
            _tokenize(tokenizer, prompt + t)[len(prompt_ids) :][:room] for t in (chosen, rejected)
        )
        if not chosen_ids or not rejected_ids:
            raise UserError(f"pair {i}: a completion tokenizes to nothing; check the chosen/rejected text")
        encoded.append(dict(prompt_ids=prompt_ids, chosen_ids=chosen_ids, rejected_ids=rejected_ids))
        encoded[-1]["first_diff"] = first_difference(chosen_ids, rejected_ids)
    return encoded


def _pair_logprobs(model, encoded: list[dict], batch_size: int, pad_id: int, desc: str):
    seqs = [
        (e["prompt_ids"] + e[side], len(e["prompt_ids"])) for e in encoded for side in ("chosen_ids", "rejected_ids")
    ]
    flat = token_logprobs(model, seqs, batch_size=batch_size, pad_id=pad_id, desc=desc)
    return flat[0::2], flat[1::2]


def _mean(values) -> float | None:
    values = list(values)
    return fmean(values) if values else None


def _by_position(encoded, rows, window: int) -> tuple[list[int], list[float], list[int]]:
    """Positions t - k (k: each pair's first differing token; pairs without one left out) within ``window``, the
    mean of ``rows``' per-token values at each, and how many tokens each mean pools."""
    points: dict[int, list[float]] = {}
    for enc, row in zip(encoded, rows):
        k = enc["first_diff"]
        for t, value in enumerate(row if k is not None else []):
            if -window <= t - k <= window:
                points.setdefault(t - k, []).append(value)
    at = sorted(points)
    return at, [fmean(points[p]) for p in at], [len(points[p]) for p in at]


def profile(encoded, chosen, rejected, window: int = 20) -> dict:
    """A model's own log-probs: sequence totals averaged over pairs, and the mean per-token log-prob by position
    around the first differing token (the paper's Figure 4, right)."""
    stats: dict[str, Any] = {"positional_logp": {}}
    for side, logps in (("chosen", chosen), ("rejected", rejected)):
        stats[f"{side}_logp_total_mean"] = _mean(map(sum, logps))
        at, means, _ = _by_position(encoded, logps, window)
        stats["positional_logp"][side] = {"position": at, "mean_logp": means}
    return stats


def summarise(encoded, ref_chosen, ref_rejected, chosen, rejected, window: int = 20) -> dict:
    """Per-model statistics from per-token log-probs of the model and of the reference (see the module doc)."""
    deltas = {
        "chosen": [[m - r for m, r in zip(cm, cr)] for cm, cr in zip(chosen, ref_chosen)],
        "rejected": [[m - r for m, r in zip(rm, rr)] for rm, rr in zip(rejected, ref_rejected)],
    }
    totals = {side: [sum(d) for d in per_pair] for side, per_pair in deltas.items()}
    buckets = {side: {"before": [], "at": [], "after": []} for side in deltas}
    for side, per_pair in deltas.items():
        for enc, pair_deltas in zip(encoded, per_pair):
            k = enc["first_diff"]
            for t, delta in enumerate(pair_deltas if k is not None else []):
                buckets[side]["before" if t < k else "at" if t == k else "after"].append(delta)
    margins = [c - r for c, r in zip(totals["chosen"], totals["rejected"])]
    stats = {"n_pairs": len(encoded), "n_pairs_without_difference": sum(e["first_diff"] is None for e in encoded)}
    for side in deltas:
        stats[f"{side}_total_delta_mean"] = _mean(totals[side])
        stats[f"{side}_per_token_delta_mean"] = _mean(_mean(d) for d in deltas[side])
    stats |= profile(encoded, chosen, rejected, window)
    stats["reward_accuracy"] = sum(m > 0 for m in margins) / len(margins) if margins else None
    stats["buckets"] = {
        side: {name: {"mean_delta_per_token": _mean(v), "n_tokens": len(v)} for name, v in parts.items()}
        for side, parts in buckets.items()
    }
    stats["positional"] = {}
    for side, per_pair in deltas.items():
        at, means, counts = _by_position(encoded, per_pair, window)
        stats["positional"][side] = {"position": at, "mean_delta": means, "n_tokens": counts}
    stats["per_pair"] = {
        "first_diff": [e["first_diff"] for e in encoded],
        **{f"n_{side}_tokens": [len(e[f"{side}_ids"]) for e in encoded] for side in deltas},
        **{f"{side}_total_delta": totals[side] for side in deltas},
        **{
            f"{side}_logp_total": [sum(x) for x in logps]
            for side, logps in (("chosen", chosen), ("rejected", rejected))
        },
    }
    return stats


def analyse_pairs(
    model_paths: list[str],
    reference: str,
    pairs: list[dict],
    fmt: str = "chatml",
    batch_size: int = 8,
    dtype: str | None = None,
    device: str | None = None,
    max_length: int | None = None,
    window: int = 20,
    per_token: bool = False,
) -> dict:
    """Δ log-probs of each model against ``reference`` on ``pairs`` (prompt/chosen/rejected[/system]). The
    reference is scored once; models load one at a time. ``per_token`` adds every token's log-probs. ``dtype``
    None: `models.default_dtype` for the device."""
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
    for path in model_paths:  # Δ only means something if every model tokenizes the pairs as the reference does
        if encode_pairs(AutoTokenizer.from_pretrained(path), pairs[:1], fmt, max_length) != encoded[:1]:
            raise UserError(
                f"model {path!r} tokenizes pair 1 differently from reference {reference!r}; Δ needs one tokenizer"
            )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = dtype or default_dtype(device)
    reference_model = load_causal_lm(reference, dtype, device)
    ref_chosen, ref_rejected = _pair_logprobs(reference_model, encoded, batch_size, pad_id, "reference")
    del reference_model
    result: dict[str, Any] = dict(reference=reference, format=fmt, dtype=dtype, n_pairs=len(encoded), window=window)
    result |= {
        "reference_stats": profile(encoded, ref_chosen, ref_rejected, window),
        "models": {},
        "versions": package_versions("smaug-dpop", "transformers", "torch"),
    }
    for path in model_paths:
        model = load_causal_lm(path, dtype, device)
        chosen, rejected = _pair_logprobs(model, encoded, batch_size, pad_id, Path(path).name or path)
        del model
        stats = summarise(encoded, ref_chosen, ref_rejected, chosen, rejected, window)
        if per_token:
            stats["per_pair"] |= dict(chosen_logps=chosen, rejected_logps=rejected)
            stats["per_pair"] |= dict(ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
        result["models"][path] = stats
    return result


def model_profile(
    path: str,
    pairs: list[dict],
    fmt: str = "chatml",
    max_length: int | None = None,
    window: int = 20,
    batch_size: int = 8,
    dtype: str | None = None,
    device: str | None = None,
) -> dict:
    """``profile`` of one model on ``pairs``, tokenized by the model's own tokenizer."""
    from transformers import AutoTokenizer

    check_model_ref(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = encode_pairs(tokenizer, pairs, fmt, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logps = _pair_logprobs(load_causal_lm(path, dtype, device), encoded, batch_size, pad_id, Path(path).name or path)
    return {"n_pairs": len(encoded), **profile(encoded, *logps, window)}
