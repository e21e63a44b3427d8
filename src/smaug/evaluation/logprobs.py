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

from pathlib import Path
from typing import Any

from axolotl_dpop.provenance import package_versions
from smaug.common.chat import IM_END, chatml_prompt
from smaug.common.errors import UserError
from smaug.common.hub import check_model_ref
from smaug.evaluation.models import load_causal_lm, token_logprobs

FORMATS = ("chatml", "chat_template", "plain")


def format_pair(row: dict, fmt: str, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) strings exactly as the trainer sees them for format ``fmt``."""
    eos = tokenizer.eos_token or ""
    system = row.get("system") or None
    if fmt == "chatml":  # axolotl chatml.prompt_pairs
        prompt = chatml_prompt(row["prompt"], system)
        chosen, rejected = row["chosen"] + IM_END, row["rejected"] + IM_END
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
        "versions": package_versions("smaug-dpop", "transformers", "torch"),
    }
    for path in model_paths:
        model = load_causal_lm(path, dtype, device)
        chosen, rejected = _pair_logprobs(model, encoded, batch_size, pad_id, Path(path).name or path)
        del model
        stats = summarise(encoded, ref_chosen, ref_rejected, chosen, rejected, window)
        if per_token:
            stats["per_pair"].update(
                chosen_logps=chosen,
                rejected_logps=rejected,
                ref_chosen_logps=ref_chosen,
                ref_rejected_logps=ref_rejected,
            )
        result["models"][path] = stats
    return result
