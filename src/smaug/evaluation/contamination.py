"""Benchmark contamination of a model against a reference model (the Smaug paper's Table 3: the Open LLM
Leaderboard's detector, github.com/swj0419/detect-pretrain-code-contamination, after Shi et al. 2023).

* Min-K% Prob of a text: the mean of its lowest ceil(k·n) token log-probs (k = 0.2); seen text scores higher.
* Reference-neighbour test: the reference model writes N neighbours of each text x (its first 40 % of words
  kept, the rest sampled); p(x) = the fraction of neighbours the target finds easier than x (a memorised x:
  p ≈ 0). A benchmark's score is the fraction of its texts with p(x) < 0.1; above 0.85 suggests contamination.
* Also: the fraction of texts whose Min-K% under the target exceeds the reference's, and both means.

Texts are each benchmark's questions with their gold answers, from local JSONL files (--data-dir, default
eval/data/offline_mini), any JSONL with a `text` field (--texts FILE --name NAME), or the Hub (--hub).
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
from smaug.evaluation.models import default_dtype, load_causal_lm, token_logprobs

DEFAULT_DATA_DIR = EVAL_CONFIG_DIR / "data" / "offline_mini"
REFERENCE = "huggyllama/llama-7b"  # the authors' "Llama7B": the detector's default --ref_model
FLAG_BELOW = 0.1  # an example is flagged when fewer than 10 % of its neighbours are easier for the target
CONTAMINATION_THRESHOLD = 0.85  # the paper: a benchmark score above this suggests contamination


# name -> (local files under --data-dir, Hub (path, config, split), the question with its gold answer)
BENCHMARKS: dict[str, tuple[str, tuple[str, str | None, str], Callable[[dict], str]]] = {
    "arc": (
        "arc_challenge_test.jsonl",
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        lambda r: f"{r['question']} {r['choices']['text'][r['choices']['label'].index(r['answerKey'])]}",
    ),
    "hellaswag": (
        "hellaswag_validation.jsonl",
        ("Rowan/hellaswag", None, "validation"),
        lambda r: f"{r['ctx']} {r['endings'][int(r['label'])]}",
    ),
    "mmlu": (
        "mmlu_*_test.jsonl",
        ("cais/mmlu", "all", "test"),
        lambda r: f"{r['question']} {r['choices'][int(r['answer'])]}",
    ),
    "truthfulqa": (
        "truthfulqa_mc2_validation.jsonl",
        ("truthfulqa/truthful_qa", "multiple_choice", "validation"),
        lambda r: f"{r['question']} {r['mc1_targets']['choices'][r['mc1_targets']['labels'].index(1)]}",
    ),
    "winogrande": (
        "winogrande_validation.jsonl",
        ("allenai/winogrande", "winogrande_xl", "validation"),
        lambda r: r["sentence"].replace("_", r["option1"] if str(r["answer"]) == "1" else r["option2"], 1),
    ),
    "gsm8k": ("gsm8k_test.jsonl", ("openai/gsm8k", "main", "test"), lambda r: f"{r['question']} {r['answer']}"),
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


def pick_examples(texts: list[str], max_examples: int | None, seed: int = 0) -> list[str]:
    """The detector's choice of texts (`random.seed(0); random.shuffle(data); data[:100]`) when there are more
    than ``max_examples``; otherwise all, in order (aligned with the per-example results)."""
    if not max_examples or len(texts) <= max_examples:
        return list(texts)
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:max_examples]


def min_k_prob(token_logps: list[float], k: float = 0.2) -> float:
    """Mean of the lowest ``ceil(k·n)`` token log-probs (Shi et al. 2023)."""
    if not token_logps:
        return float("nan")
    lowest = sorted(token_logps)[: max(1, math.ceil(k * len(token_logps)))]
    return sum(lowest) / len(lowest)


def text_logprobs(model, tokenizer, texts: list[str], batch_size: int = 8, desc: str = "texts") -> list[list[float]]:
    ids = [tokenizer(text)["input_ids"] for text in texts]
    bos = tokenizer.bos_token_id or tokenizer.eos_token_id  # a one-token text needs a token to be predicted from
    seqs = [(seq if len(seq) > 1 else [bos, *seq], 1) for seq in ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return token_logprobs(model, seqs, batch_size=batch_size, pad_id=pad, desc=desc)


def generate_neighbours(model, tokenizer, text: str, n: int, prefix_ratio: float = 0.4) -> list[str]:
    """``n`` texts that keep the first ``ceil(prefix_ratio·words)`` words of ``text`` and sample the rest."""
    import torch

    words = text.split()
    keep = math.ceil(len(words) * prefix_ratio)
    prefix = " ".join(words[:keep]) if keep else (tokenizer.bos_token or "")
    ids = tokenizer(prefix, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = dict(do_sample=True, max_new_tokens=max(1, len(words) - keep), min_new_tokens=1, num_return_sequences=n)
    with torch.inference_mode():
        return tokenizer.batch_decode(model.generate(ids, **sampling, pad_token_id=pad), skip_special_tokens=True)


def score_texts(
    model: str,
    reference: str,
    texts_by_benchmark: dict[str, list[str]],
    k: float = 0.2,
    neighbours: int = 100,
    prefix_ratio: float = 0.4,
    max_examples: int | None = 100,
    batch_size: int = 8,
    dtype: str | None = None,
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """Contamination statistics per benchmark for ``model`` against ``reference`` on the texts `pick_examples`
    chooses; ``neighbours=0`` reports Min-K% only."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    check_model_ref(model)
    check_model_ref(reference, "reference")
    chosen = {name: pick_examples(texts, max_examples, seed) for name, texts in texts_by_benchmark.items()}
    tok_t, tok_r = AutoTokenizer.from_pretrained(model), AutoTokenizer.from_pretrained(reference)
    # The reference first: its Min-K% and the neighbours it writes; it is freed before the target loads.
    dtype = dtype or default_dtype(device)
    ref_model = load_causal_lm(reference, dtype, device)
    torch.manual_seed(seed)
    ref_logps, hoods = {}, {}
    for name, texts in chosen.items():
        ref_logps[name] = text_logprobs(ref_model, tok_r, texts, batch_size, f"reference {name}")
        texts = tqdm(texts if neighbours else [], desc=f"neighbours {name}", leave=False)
        hoods[name] = [generate_neighbours(ref_model, tok_r, t, neighbours, prefix_ratio) for t in texts]
    del ref_model
    target = load_causal_lm(model, dtype, device)
    result = dict(model=model, reference=reference, k=k, neighbours=neighbours, prefix_ratio=prefix_ratio)
    result |= dict(flag_below=FLAG_BELOW, threshold=CONTAMINATION_THRESHOLD, dtype=dtype, seed=seed, benchmarks={})
    for name, texts in chosen.items():
        logps = text_logprobs(target, tok_t, texts, batch_size, f"target {name}")
        mink_t, mink_r = [min_k_prob(x, k) for x in logps], [min_k_prob(x, k) for x in ref_logps[name]]
        loss_t = [-sum(x) / len(x) for x in logps]
        entry = {
            "n": len(texts),
            "mink_model_mean": sum(mink_t) / len(mink_t),
            "mink_reference_mean": sum(mink_r) / len(mink_r),
            "mink_above_ref": sum(a > b for a, b in zip(mink_t, mink_r)) / len(texts),
            "per_example": {"mink_model": mink_t, "mink_reference": mink_r, "loss_model": loss_t},
            "score": None,
        }
        if neighbours:
            p_values = []
            for text_loss, hood in zip(loss_t, tqdm(hoods[name], desc=f"scoring {name}", leave=False)):
                hood_loss = [-sum(x) / len(x) for x in text_logprobs(target, tok_t, hood, batch_size, "neighbours")]
                p_values.append(sum(z < text_loss for z in hood_loss) / len(hood_loss))
            entry["per_example"]["p_neighbours"] = p_values
            entry["score"] = sum(p < FLAG_BELOW for p in p_values) / len(p_values)
        entry["suggests_contamination"] = entry["score"] is not None and entry["score"] > CONTAMINATION_THRESHOLD
        result["benchmarks"][name] = entry
    return result
