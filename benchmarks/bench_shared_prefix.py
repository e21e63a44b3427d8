"""The prefix-shared DPOP step against the unshared one, both with the chunked head, measured in one process.

Pairs: the project's builders on the mini sources (data/mini/*.jsonl; MetaMath one corrupted intermediate
result, ARC and HellaSwag one pair per wrong choice), zero-shot (the builders' default) and with ``--few-shot K``
solved examples before each prompt (the released *_DPO_FewShot sets' K is not known here: K=3 assumed). The
three sets of the Smaug mix without a builder (ORCA, truthy, UltraFeedback) share only their prompt: a stand-in
("prompt-only": a MetaMath query, its solution, and another problem's solution) measures that case, and the mix
is also printed with those sets at 1.00x (no saving at all, the bound). Prompts and answers in ChatML, as the
72B recipe's `chatml.prompt_pairs` writes them, tokenised by a byte-level BPE trained here on these texts (digits
split one by one as Qwen's and Llama's tokenizers split them; no Hub).

Model: a random Llama body (hidden 1,024, 4 layers, SDPA) with vocabulary 152,064, fp32, on this CPU.
Step: forward + backward of the DPOP loss (precomputed reference log-probs, as the 34B/72B recipes run), the
trainer's chunked path (``completion_logps``) against ``shared_prefix_logps``. Kinds: ``unshared``; ``pairs``
(one tree per pair); ``questions`` (ARC/HellaSwag: a question's pairs in one micro-batch, one tree, as
``GroupedBatchSampler`` batches them). Every kind steps over the same pairs each round: ``--questions`` groups
(a question's pairs, or single pairs), split into micro-batches that hold one pair of each question (as random
sampling leaves a question's pairs apart) or, for ``questions``, one question each. Rounds interleave the kinds
(order rotating); ratios are of the summed times, wall and process CPU (the steadier one on a shared machine).
Peak memory: the peak of live tensor bytes created during one step (``bench_common.LiveTensorBytes``, a
dispatch-mode tracker; tracemalloc does not see torch's CPU allocations), weights and gradient buffers excluded
(allocated before: they are the same for every kind); on CUDA ``max_memory_allocated``.
Tokens per pair come from every pair of a set; the floor counts each distinct token of a question's sequences
once (a trie over all its answers).

Smaug-72B projection (forward FLOPs; the recipe's gradient checkpointing and chunked head multiply the body,
attention and head alike by 4, so the ratio is the forward one): per token 2 x the layer parameters, per visible
(query, key) 4·h per layer, per completion token 2·h·V. Unshared attention is causal (flash-attention 2); the
shared forward with SDPA computes the whole tree x tree mask, FlexAttention only the visible blocks.

    python benchmarks/bench_shared_prefix.py [--rounds 2 --questions 3 --few-shot 3]
Targets (issue 20, zero-shot): MetaMath tokens <= 0.75x, step <= 0.80x; mix step <= 0.80x (<= 0.70x with
question trees); peak memory <= 0.85x; few-shot MetaMath step <= 0.65x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
from bench_common import LiveTensorBytes

from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE, completion_logps, last_hidden_states
from axolotl_dpop.loss import dpop_loss
from axolotl_dpop.shared_prefix import build_trees, shared_prefix_logps

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"metamath": "metamath.jsonl", "arc": "arc_challenge.jsonl", "hellaswag": "hellaswag.jsonl"}
# Pairs in the Smaug mix: MetaMath, ARC, HellaSwag as src/smaug/data/README.md counts them; Intel/orca_dpo_pairs
# and jondurbin/truthy-dpo-v0.1 rows (their cards); UltraFeedback train_prefs (recipes/DATASETS.md).
MIX = {"metamath": 393_999, "arc": 3_357, "hellaswag": 119_715, "prompt-only": 12_859 + 1_016 + 60_829}
QWEN_72B = {"hidden": 8192, "layers": 80, "heads": 64, "kv_heads": 8, "intermediate": 24576, "vocab": 152064}
SEQUENCE_LEN = 2048  # recipes/smaug72b_dpop.yml


def build_pairs(few_shot: int) -> dict[str, list[dict]]:
    from smaug.data.builders import get_builder

    pairs = {}
    for name, file in SOURCES.items():
        rows = [json.loads(line) for line in (ROOT / "data/mini" / file).read_text().splitlines()]
        pairs[name] = get_builder(name).build(rows, seed=0, few_shot=few_shot, progress=False)[0]
    if not few_shot:
        mm = pairs["metamath"]
        pairs["prompt-only"] = [{**p, "rejected": mm[(i + 1) % len(mm)]["chosen"]} for i, p in enumerate(mm)]
    return pairs


def train_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, initial_alphabet=byte_level.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def chatml(pair) -> tuple[str, str, str]:
    prompt = f"<|im_start|>user\n{pair['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    return prompt, pair["chosen"] + "<|im_end|>", pair["rejected"] + "<|im_end|>"


def tokenize(tokenizer, pairs) -> list[dict]:
    out = []
    for pair in pairs:
        prompt, chosen, rejected = (e.ids for e in tokenizer.encode_batch(list(chatml(pair))))
        out.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "key": pair["prompt"]})
    return out


def collate(rows):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=0)(rows)


def groups_of(rows) -> list[list[dict]]:
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["key"], tuple(row["chosen_ids"])), []).append(row)
    return list(groups.values())


def trie_size(sequences) -> int:
    nodes = set()
    for seq in sequences:
        nodes.update(tuple(seq[: i + 1]) for i in range(len(seq)))
    return len(nodes)


def token_stats(rows) -> dict[str, float]:
    """Per pair: tokens through the body, head rows and visible attention pairs, per kind; the floor."""
    stats = dict.fromkeys(
        ("unshared", "pairs", "questions", "floor", "head_unshared", "head_shared", "head_questions"), 0.0
    )
    stats.update(attn_causal=0.0, attn_dense=0.0, attn_tree=0.0, longest=0)
    for group in groups_of(rows):
        for row in group:
            seqs = [row["prompt_ids"] + row[k] for k in ("chosen_ids", "rejected_ids")]
            stats["unshared"] += sum(map(len, seqs))
            stats["head_unshared"] += len(row["chosen_ids"]) + len(row["rejected_ids"])
            stats["attn_causal"] += sum(len(s) * (len(s) + 1) / 2 for s in seqs)
            batch = collate([row])
            trees = build_trees(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            stats["pairs"] += trees.tokens
            stats["head_shared"] += len(trees.labels)
            stats["attn_dense"] += trees.tokens**2
            stats["attn_tree"] += float((trees.position_ids + 1)[trees.branch >= 0].sum())
            stats["longest"] = max(stats["longest"], *map(len, seqs))
        batch = collate(group)
        trees = build_trees(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        stats["questions"] += trees.tokens
        stats["head_questions"] += len(trees.labels)
    prompts: dict = {}
    for row in rows:
        prompts.setdefault(row["key"], []).extend(row["prompt_ids"] + row[k] for k in ("chosen_ids", "rejected_ids"))
    stats["floor"] = sum(trie_size(seqs) for seqs in prompts.values())
    return {k: (v if k == "longest" else v / len(rows)) for k, v in stats.items()}


def build_model():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=152064,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").train()


def step(model, batch, kind: str) -> None:
    if kind == "unshared":
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        _, hidden = last_hidden_states(model, kwargs)
        head = model.get_output_embeddings()
        ids, completion = batch["input_ids"], batch["completion_mask"]
        logps, _ = completion_logps(head, hidden, ids, completion, DEFAULT_CHUNK_SIZE, with_stats=True)
    else:
        _, logps, _ = shared_prefix_logps(model, model, batch, DEFAULT_CHUNK_SIZE, with_stats=True)
    chosen, rejected = logps.chunk(2)
    losses, _, _ = dpop_loss(chosen, rejected, chosen.detach() + 1.0, rejected.detach(), 0.3, 50.0)
    losses.mean().backward()


def peak_bytes(model, batches) -> int:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for batch, kind in batches:
            model.zero_grad(set_to_none=False)
            step(model, batch, kind)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # Ops on a tensor of 64 MiB or more (weights, logits) are not computed: which tensors exist does not depend
    # on their values (bench_chunked_logps checks this against a real run).
    with LiveTensorBytes(skip_compute_above=2**26) as tracker:
        for batch, kind in batches:
            model.zero_grad(set_to_none=False)
            step(model, batch, kind)
    return tracker.peak


def micro_batches(sample: list[list[dict]], kind: str, device) -> list[dict]:
    if kind == "questions":
        parts = sample
    else:  # pair j of every question together: no two pairs of one question in a micro-batch
        parts = [[g[j] for g in sample if j < len(g)] for j in range(max(map(len, sample)))]
    return [{k: v.to(device) for k, v in collate(p).items()} for p in parts]


def measure(model, rows, kinds, rounds: int, questions: int, rng) -> dict[str, dict[str, float]]:
    groups = groups_of(rows)
    rng.shuffle(groups)
    size = max(map(len, groups))  # whole questions (one whose wrong choice repeats the right one has fewer pairs)
    groups = [g for g in groups if len(g) == size]
    device = model.device
    out = {k: {"wall": 0.0, "cpu": 0.0, "pairs": 0, "peak": 0} for k in kinds}
    for r in range(rounds):
        sample = groups[r * questions : (r + 1) * questions]
        if len(sample) < questions:
            raise SystemExit(f"only {len(groups)} groups: lower --rounds or --questions")
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            batches = micro_batches(sample, kind, device)
            if r == 0:  # warm-up and peak memory on the first round's batches
                out[kind]["peak"] = peak_bytes(model, [(b, kind) for b in batches])
            for batch in batches:
                model.zero_grad(set_to_none=False)  # the gradient buffers stay: the same for every kind
                wall, cpu = time.perf_counter(), time.process_time()
                step(model, batch, kind)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                out[kind]["wall"] += time.perf_counter() - wall
                out[kind]["cpu"] += time.process_time() - cpu
            out[kind]["pairs"] += sum(map(len, sample))
    return out


def forward_flops(stats: dict, kind: str, shape: dict, attention: str) -> tuple[float, float]:
    """(total, attention) forward FLOPs per pair at ``shape`` for ``stats``' token counts."""
    h, layers, d = shape["hidden"], shape["layers"], shape["hidden"] // shape["heads"]
    layer_params = h * (h + 2 * shape["kv_heads"] * d) + h * h + 3 * h * shape["intermediate"]
    tokens, head, attn = {
        "unshared": (stats["unshared"], stats["head_unshared"], stats["attn_causal"]),
        "pairs": (stats["pairs"], stats["head_shared"], stats[attention]),
    }[kind]
    attention_flops = 4 * h * layers * attn
    return 2 * layer_params * layers * tokens + attention_flops + 2 * h * shape["vocab"] * head, attention_flops


def mix(values: dict[str, float], weights: dict[str, int]) -> float:
    return sum(weights[k] * values[k] for k in weights) / sum(weights.values())


def per_pair(stats: dict, timing: dict) -> dict[str, dict[str, float]]:
    """Per kind of trees: tokens, seconds per pair (wall, CPU) and peak bytes, shared and unshared; printed."""
    u, out = timing["unshared"], {}
    for kind in [k for k in ("pairs", "questions") if k in timing]:
        t = timing[kind]
        out[kind] = {
            f"{what}_{side}": x[what] / x["pairs"] for what in ("wall", "cpu") for side, x in (("s", t), ("u", u))
        }
        out[kind].update(tokens_s=stats[kind], tokens_u=stats["unshared"], peak_s=t["peak"], peak_u=u["peak"])
    return out


def bench_flops(tokens: float, head: float) -> float:
    """Training FLOPs per pair at this benchmark's shape, attention left out: body forward + backward (3 passes),
    the chunked head 4 (forward, recomputed forward, 2 backward matmuls)."""
    return 3 * 2 * 4 * (4 * 1024**2 + 3 * 1024 * 2816) * tokens + 4 * 2 * 1024 * 152064 * head


def print_set(setting: str, name: str, stats: dict, rows: dict) -> None:
    for kind, r in rows.items():
        head = stats["head_questions" if kind == "questions" else "head_shared"]
        flops = bench_flops(r["tokens_s"], head) / bench_flops(r["tokens_u"], stats["head_unshared"])
        print(
            f"  {setting:9} {name:11} {kind + ' trees':15} tokens {r['tokens_u']:6.1f} -> {r['tokens_s']:6.1f} "
            f"({r['tokens_s'] / r['tokens_u']:.3f}; floor {stats['floor'] / r['tokens_u']:.3f}), head rows "
            f"{stats['head_unshared']:5.1f} -> {head:5.1f}, FLOPs {flops:.3f}  step "
            f"{r['wall_s'] / r['wall_u']:.3f} [{r['cpu_s'] / r['cpu_u']:.3f}]  peak {r['peak_s'] / 2**20:5.0f} / "
            f"{r['peak_u'] / 2**20:5.0f} MiB = {r['peak_s'] / r['peak_u']:.3f}",
            flush=True,
        )


def report(results: dict, settings: list[str]) -> None:
    for setting in settings:
        # The sets without few-shot prompts (prompt-only) enter every setting's mix as measured zero-shot.
        sets = {n: setting if (setting, n) in results else settings[0] for n in MIX}
        for trees in ("pairs", "questions"):
            r = {n: results[sets[n], n][1].get(trees) or results[sets[n], n][1]["pairs"] for n in MIX}
            ratio = {
                what: mix({n: x[f"{what}_s"] for n, x in r.items()}, MIX)
                / mix({n: x[f"{what}_u"] for n, x in r.items()}, MIX)
                for what in ("tokens", "wall", "cpu")
            }
            bound = {n: x["wall_u" if n == "prompt-only" else "wall_s"] for n, x in r.items()}
            bound_ratio = mix(bound, MIX) / mix({n: x["wall_u"] for n, x in r.items()}, MIX)
            peak = max(x["peak_s"] for x in r.values()) / max(x["peak_u"] for x in r.values())
            print(
                f"  mix {setting}, {trees} trees: tokens {ratio['tokens']:.3f}, step {ratio['wall']:.3f} "
                f"[{ratio['cpu']:.3f}] (prompt-only sets at 1.00: {bound_ratio:.3f}), peak (largest step) {peak:.3f}"
            )

    for shape in (QWEN_72B, {**QWEN_72B, "kv_heads": 64}):
        h, layers, d = shape["hidden"], shape["layers"], shape["hidden"] // shape["heads"]
        layer_params = h * (h + 2 * shape["kv_heads"] * d) + h * h + 3 * h * shape["intermediate"]
        print(f"\nSmaug-72B projection, {shape}, sequence_len {SEQUENCE_LEN} (recipes/smaug72b_dpop.yml):")
        print(
            f"  per token 2 x {layer_params / 1e6:.0f} M x {layers} layers = {2 * layer_params * layers / 1e9:.1f} "
            f"GFLOP; per visible (query, key) 4 x {h} x {layers} = {4 * h * layers / 1e6:.2f} MFLOP; per completion "
            f"token 2 x {h} x {shape['vocab']} = {2 * h * shape['vocab'] / 1e9:.2f} GFLOP"
        )
        for setting in settings:
            stats = {n: results[setting if (setting, n) in results else settings[0], n][0] for n in MIX}
            longest = max(s["longest"] for s in stats.values())
            print(f"  {setting} (longest sequence {longest} tokens <= {SEQUENCE_LEN}: no truncation), mix per pair:")
            for what in ("unshared", "head_unshared", "attn_causal", "pairs", "head_shared", "attn_tree", "attn_dense"):
                print(f"    {what:14} {mix({n: s[what] for n, s in stats.items()}, MIX):10.0f}")
            base = {n: forward_flops(s, "unshared", shape, "attn_tree") for n, s in stats.items()}
            total_u, attn_u = (mix({n: v[i] for n, v in base.items()}, MIX) for i in (0, 1))
            print(
                f"    unshared (causal flash-attention): {total_u / 1e12:.3f} TFLOP, attention {attn_u / total_u:.1%}"
            )
            for attention, label in (("attn_dense", "SDPA, dense tree mask"), ("attn_tree", "FlexAttention")):
                shared = {n: forward_flops(s, "pairs", shape, attention) for n, s in stats.items()}
                total_s, attn_s = (mix({n: v[i] for n, v in shared.items()}, MIX) for i in (0, 1))
                print(
                    f"    shared ({label}): {total_s / 1e12:.3f} TFLOP, attention {attn_s / total_s:.1%}; "
                    f"projected step ratio {total_s / 1e12:.3f} / {total_u / 1e12:.3f} = {total_s / total_u:.3f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--questions", type=int, default=3, help="groups (questions or single pairs) per round")
    parser.add_argument("--few-shot", type=int, default=3)
    parser.add_argument("--sets", nargs="+", choices=list(MIX), default=list(MIX), help="the mix needs all")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"load at the start: {os.getloadavg()}; torch threads {torch.get_num_threads()}")

    settings = {"zero-shot": build_pairs(0), f"{args.few_shot}-shot": build_pairs(args.few_shot)}
    texts = [t for pairs in settings.values() for ps in pairs.values() for p in ps for t in chatml(p)]
    tokenizer = train_tokenizer(texts)
    n_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts))
    print(f"tokenizer: byte-level BPE, 4,096 tokens, {sum(map(len, texts)) / n_tokens:.2f} characters per token")
    model = build_model()
    print("\nPer pair. Tokens through the body: unshared -> shared (ratio); floor = each distinct token once.")
    print(
        "Step: shared / unshared time per pair, wall [process CPU]. Peak: MiB of one step's tensors, shared / unshared."
    )
    print(
        "FLOPs: the step's matmul FLOPs ratio at this shape (bench_flops), what the step ratio tends to on an idle CPU."
    )
    first = tokenize(tokenizer, settings["zero-shot"]["arc"][:1])
    step(model, micro_batches([first], "unshared", model.device)[0], "unshared")  # allocates the gradients
    rng = random.Random(0)
    results = {}
    for setting, pairs in settings.items():
        for name, ps in [(n, ps) for n, ps in pairs.items() if n in args.sets]:
            rows = tokenize(tokenizer, ps)
            kinds = ["unshared", "pairs"] + (["questions"] if len(groups_of(rows)) < len(rows) else [])
            stats = token_stats(rows)
            results[setting, name] = (
                stats,
                per_pair(stats, measure(model, rows, kinds, args.rounds, args.questions, rng)),
            )
            print_set(setting, name, stats, results[setting, name][1])
    if set(args.sets) == set(MIX):
        report(results, list(settings))
    print(f"\nload at the end: {os.getloadavg()}; benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
