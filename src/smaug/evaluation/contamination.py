"""Benchmark contamination check of a model against a reference model (the Smaug paper's Table 3).

The Smaug paper ran the Open LLM Leaderboard's contamination detector (github.com/swj0419/
detect-pretrain-code-contamination, built on Shi et al. 2023, "Detecting Pretraining Data from Large Language
Models", the Min-K% Prob paper) with a reference model, and reports one score per benchmark where a value
above 0.85 suggests contamination. We implement that reference-based test and, alongside it, plain
Min-K% Prob for both models:

* **Min-K% Prob** of a text under a model (Shi et al.): tokenise the text, take the log-prob of every token
  given its prefix, and average the lowest ``k`` fraction of them (``ceil(k·n)`` tokens, k = 0.2). Seen text has
  few surprising tokens, so a higher Min-K% means more likely seen.
* **Reference-neighbour test** (the detector's ``minkprob_w/_ref``): for each benchmark text x, the
  *reference* model writes ``N`` neighbours of x — the first ``ceil(0.4·words)`` words of x kept, the rest
  sampled (``do_sample``, as many new tokens as words dropped). ``p(x)`` = fraction of neighbours z whose mean
  token loss under the *target* model is lower than the target's loss on x itself. A model that memorised x
  finds x easier than any of its neighbours, so ``p(x) ≈ 0``; a model that did not sees x as one more sample.
* **Contamination score** of a benchmark = fraction of its examples with ``p(x) < 0.1``. Scores near 0 are
  what a clean model shows; > 0.85 suggests the benchmark was trained on (the paper's threshold).
* Also reported: ``mink_above_ref`` = fraction of examples where the target's Min-K% exceeds the reference's,
  and the mean Min-K% of both models (cheap: one forward pass each; no sampling).

Texts per benchmark (question with its gold answer, as a model would have seen them in training data):
ARC: question + correct choice; GSM8K: question + answer; MMLU: question + correct choice; TruthfulQA:
question + the mc1 correct answer; HellaSwag: context + correct ending; Winogrande: sentence with the blank
filled by the correct option. They come from local JSONL files (``--data-dir``, default the offline eval data
``eval/data/offline_mini``), from any JSONL with a ``text`` field (``--texts FILE --name NAME``), or from the Hub
(``--hub``, needs network).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from smaug.common.errors import UserError
from smaug.common.files import read_jsonl
from smaug.common.hub import check_model_ref
from smaug.common.paths import EVAL_CONFIG_DIR
from smaug.evaluation.models import load_causal_lm, token_logprobs

DEFAULT_DATA_DIR = EVAL_CONFIG_DIR / "data" / "offline_mini"
FLAG_BELOW = 0.1  # an example is flagged when fewer than 10 % of its neighbours are easier for the target
CONTAMINATION_THRESHOLD = 0.85  # the paper: a benchmark score above this suggests contamination


def _arc(row):
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    return f"{row['question']} {texts[labels.index(row['answerKey'])]}"


def _gsm8k(row):
    return f"{row['question']} {row['answer']}"


def _mmlu(row):
    return f"{row['question']} {row['choices'][int(row['answer'])]}"


def _truthfulqa(row):
    targets = row["mc1_targets"]
    return f"{row['question']} {targets['choices'][targets['labels'].index(1)]}"


def _hellaswag(row):
    return f"{row['ctx']} {row['endings'][int(row['label'])]}"


def _winogrande(row):
    option = row["option1"] if str(row["answer"]) == "1" else row["option2"]
    return row["sentence"].replace("_", option, 1)


# name -> (local file glob under --data-dir, Hub (path, config, split), text builder)
BENCHMARKS: dict[str, tuple[str, tuple[str, str | None, str], Callable[[dict], str]]] = {
    "arc": ("arc_challenge_test.jsonl", ("allenai/ai2_arc", "ARC-Challenge", "test"), _arc),
    "hellaswag": ("hellaswag_validation.jsonl", ("Rowan/hellaswag", None, "validation"), _hellaswag),
    "mmlu": ("mmlu_*_test.jsonl", ("cais/mmlu", "all", "test"), _mmlu),
    "truthfulqa": (
        "truthfulqa_mc2_validation.jsonl",
        ("truthfulqa/truthful_qa", "multiple_choice", "validation"),
        _truthfulqa,
    ),
    "winogrande": ("winogrande_validation.jsonl", ("allenai/winogrande", "winogrande_xl", "validation"), _winogrande),
    "gsm8k": ("gsm8k_test.jsonl", ("openai/gsm8k", "main", "test"), _gsm8k),
}


def load_benchmark_texts(name: str, data_dir: str | Path | None = None, hub: bool = False) -> list[str]:
    """Gold-answer texts of one benchmark from local JSONL files (or the Hub with ``hub=True``)."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or pass --texts FILE")
    pattern, (hub_path, hub_config, hub_split), build = BENCHMARKS[name]
    if hub:
        from datasets import load_dataset

        rows = list(load_dataset(hub_path, hub_config, split=hub_split))
        source = f"{hub_path}:{hub_split}"
    else:
        data_dir = Path(data_dir or DEFAULT_DATA_DIR)
        files = sorted(data_dir.glob(pattern))
        if not files:
            raise UserError(
                f"{data_dir}/{pattern}: no such file for benchmark {name!r}; pass --data-dir, --hub, or --texts FILE"
            )
        rows, source = [], ", ".join(str(f) for f in files)
        for path in files:
            rows.extend(read_jsonl(path, f"{name} benchmark"))
    texts = []
    for i, row in enumerate(rows, 1):
        try:
            texts.append(build(row))
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise UserError(f"{source}: {name} row {i}: missing or bad field ({err!r})") from None
    return texts


def load_texts_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: texts file not found; pass a JSONL file with a 'text' field per line")
    texts = []
    for i, row in enumerate(read_jsonl(path, "texts"), 1):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise UserError(f"{path}: row {i}: field 'text' is missing or empty")
        texts.append(row["text"])
    if not texts:
        raise UserError(f"{path}: no texts in the file")
    return texts


def min_k_prob(token_logps: list[float], k: float = 0.2) -> float:
    """Mean of the lowest ``ceil(k·n)`` token log-probs (Shi et al. 2023)."""
    if not token_logps:
        return float("nan")
    lowest = sorted(token_logps)[: max(1, math.ceil(k * len(token_logps)))]
    return sum(lowest) / len(lowest)


def _encode(tokenizer, texts: list[str]) -> list[tuple[list[int], int]]:
    seqs = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) < 2:
            ids = [tokenizer.bos_token_id or tokenizer.eos_token_id] + ids
        seqs.append((ids, 1))
    return seqs


def text_logprobs(model, tokenizer, texts: list[str], batch_size: int = 8, desc: str = "texts") -> list[list[float]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return token_logprobs(model, _encode(tokenizer, texts), batch_size=batch_size, pad_id=pad, desc=desc)


def generate_neighbours(model, tokenizer, text: str, n: int, prefix_ratio: float = 0.4) -> list[str]:
    """``n`` texts that keep the first ``ceil(prefix_ratio·words)`` words of ``text`` and sample the rest."""
    import torch

    words = text.split()
    keep = math.ceil(len(words) * prefix_ratio)
    prefix = " ".join(words[:keep]) if keep else (tokenizer.bos_token or "")
    ids = tokenizer(prefix, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        out = model.generate(
            ids,
            do_sample=True,
            max_new_tokens=max(1, len(words) - keep),
            min_new_tokens=1,
            num_return_sequences=n,
            pad_token_id=pad,
        )
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def score_texts(
    model: str,
    reference: str,
    texts_by_benchmark: dict[str, list[str]],
    k: float = 0.2,
    neighbours: int = 100,
    prefix_ratio: float = 0.4,
    max_examples: int | None = 100,
    batch_size: int = 8,
    dtype: str = "bfloat16",
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """Contamination statistics per benchmark for ``model`` against ``reference`` (see module doc).

    ``max_examples`` samples that many texts per benchmark (seeded, like the detector's 100);
    ``neighbours=0`` skips the (sampling-heavy) neighbour test and reports Min-K% only."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    check_model_ref(model)
    check_model_ref(reference, "reference")
    chosen: dict[str, list[str]] = {}
    for name, texts in texts_by_benchmark.items():
        texts = list(texts)
        if max_examples and len(texts) > max_examples:
            texts = random.Random(seed).sample(texts, max_examples)
        chosen[name] = texts

    tok_t, tok_r = AutoTokenizer.from_pretrained(model), AutoTokenizer.from_pretrained(reference)
    # Reference first: its Min-K% and the neighbours it writes; then it is freed before the target loads.
    ref_model = load_causal_lm(reference, dtype, device)
    ref_logps = {
        name: text_logprobs(ref_model, tok_r, texts, batch_size, f"reference {name}") for name, texts in chosen.items()
    }
    hoods: dict[str, list[list[str]]] = {}
    if neighbours:
        torch.manual_seed(seed)
        for name, texts in chosen.items():
            hoods[name] = [
                generate_neighbours(ref_model, tok_r, t, neighbours, prefix_ratio)
                for t in tqdm(texts, desc=f"neighbours {name}", leave=False)
            ]
    del ref_model

    target = load_causal_lm(model, dtype, device)
    result = {
        "model": model,
        "reference": reference,
        "k": k,
        "neighbours": neighbours,
        "prefix_ratio": prefix_ratio,
        "flag_below": FLAG_BELOW,
        "threshold": CONTAMINATION_THRESHOLD,
        "dtype": dtype,
        "seed": seed,
        "benchmarks": {},
    }
    for name, texts in chosen.items():
        logps = text_logprobs(target, tok_t, texts, batch_size, f"target {name}")
        mink_t = [min_k_prob(x, k) for x in logps]
        mink_r = [min_k_prob(x, k) for x in ref_logps[name]]
        loss_t = [-sum(x) / len(x) for x in logps]
        entry = {
            "n": len(texts),
            "mink_model_mean": sum(mink_t) / len(mink_t),
            "mink_reference_mean": sum(mink_r) / len(mink_r),
            "mink_above_ref": sum(a > b for a, b in zip(mink_t, mink_r)) / len(texts),
            "per_example": {"mink_model": mink_t, "mink_reference": mink_r, "loss_model": loss_t},
        }
        if neighbours:
            p_values = []
            for text_loss, hood in zip(loss_t, tqdm(hoods[name], desc=f"scoring {name}", leave=False)):
                hood_logps = text_logprobs(target, tok_t, hood, batch_size, "neighbours")
                hood_loss = [-sum(x) / len(x) for x in hood_logps]
                p_values.append(sum(z < text_loss for z in hood_loss) / len(hood_loss))
            entry["per_example"]["p_neighbours"] = p_values
            entry["score"] = sum(p < FLAG_BELOW for p in p_values) / len(p_values)
        else:
            entry["score"] = None
        entry["suggests_contamination"] = entry["score"] is not None and entry["score"] > CONTAMINATION_THRESHOLD
        result["benchmarks"][name] = entry
    del target
    return result
