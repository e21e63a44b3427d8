"""One-GPU check of what the CPU benchmarks cannot measure: step time and peak memory of a TRL-style DPO step
(full logits) against DPOP full-logits, DPOP with the chunked head, and the prefix-shared DPOP step (chunked head)
under each attention implementation the tree mask allows (SDPA; FlexAttention, GPU only).

A randomly initialised model of a real architecture (Qwen2-7B's shape by default: hidden 3,584, 28 layers, GQA,
vocabulary 152,064) in bf16, built from a config (no Hub), with gradient checkpointing as the big recipes run it.
Pairs are synthetic and MetaMath-shaped: a prompt, an answer, and the same answer with one token changed at
``--differ-at`` of its length; reference log-probs are precomputed (constants), as in the 34B/72B recipes. Needs
only torch and transformers (the DPO step is written here; the DPOP parts come from plugins/axolotl_dpop).
Kinds run interleaved in rounds; medians of the step times; peak memory is ``max_memory_allocated`` during one
step above the weights and gradient buffers (on a CPU: not measured).

    python benchmarks/gpu_check.py                       # on one GPU, <= 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny   # smoke check of the script on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from axolotl_dpop.chunked_logps import completion_logps, last_hidden_states  # noqa: E402
from axolotl_dpop.loss import dpop_loss  # noqa: E402
from axolotl_dpop.shared_prefix import shared_prefix_logps  # noqa: E402

QWEN2_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
)
TINY = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def make_batch(args, vocab: int, device) -> dict[str, torch.Tensor]:
    """A right-padded [chosen; rejected] batch as TRL's collator makes it (completion_mask on the answers)."""
    gen = torch.Generator().manual_seed(0)
    rows, masks = [], []
    for _ in range(args.batch):
        prompt = torch.randint(3, vocab, (args.prompt,), generator=gen)
        chosen = torch.randint(3, vocab, (args.answer,), generator=gen)
        rejected = chosen.clone()
        at = int(args.differ_at * args.answer)
        rejected[at] = (chosen[at] + 1) % vocab
        for answer in (chosen, rejected):
            rows.append(torch.cat([prompt, answer]))
            masks.append(torch.cat([torch.zeros(args.prompt), torch.ones(args.answer)]))
    order = list(range(0, 2 * args.batch, 2)) + list(range(1, 2 * args.batch, 2))  # chosen rows first
    ids = torch.stack([rows[i] for i in order])
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "completion_mask": torch.stack([masks[i] for i in order]).long().to(device),
    }


def full_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


def step(model, batch, kind: str, chunk: int) -> None:
    if kind in ("dpo", "dpop-full"):
        logps = full_logps(model, batch)
    elif kind == "dpop-chunked":
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        _, hidden = last_hidden_states(model, kwargs)
        logps, _ = completion_logps(
            model.get_output_embeddings(), hidden, batch["input_ids"], batch["completion_mask"], chunk
        )
    else:
        _, logps, _ = shared_prefix_logps(model, model, batch, chunk)
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = chosen.detach() + 1.0, rejected.detach()
    if kind == "dpo":  # TRL's sigmoid DPO loss
        losses = -F.logsigmoid(0.3 * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    else:
        losses = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, 0.3, 50.0)[0]
    losses.mean().backward()
    model.zero_grad(set_to_none=False)


def run(model, batch, kind: str, args, sync) -> tuple[float, int | None]:
    attention = kind.rsplit("-", 1)[1] if kind.startswith("shared") else "sdpa"
    model.set_attn_implementation({"sdpa": "sdpa", "flex": "flex_attention"}[attention])
    cuda = batch["input_ids"].is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sync()
    start = time.perf_counter()
    step(model, batch, kind, args.chunk)
    sync()
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated() - base) if cuda else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short pairs (smoke check)")
    parser.add_argument("--batch", type=int, default=2, help="pairs per micro-batch")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--answer", type=int, default=512)
    parser.add_argument("--differ-at", type=float, default=0.5)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-checkpointing", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.prompt, args.answer, args.chunk = min(args.prompt, 24), min(args.answer, 32), min(args.chunk, 16)
    from transformers import AutoModelForCausalLM, Qwen2Config

    started = time.perf_counter()
    device = torch.device(args.device)
    config = Qwen2Config(**(TINY if args.tiny else QWEN2_7B), tie_word_embeddings=False, max_position_embeddings=4096)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = make_batch(args, config.vocab_size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    kinds = ["dpo", "dpop-full", "dpop-chunked", "shared-sdpa"] + (["shared-flex"] if device.type == "cuda" else [])
    print(
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}; "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, bf16, {args.batch} pairs of "
        f"{args.prompt} + {args.answer} tokens, answers differ at {args.differ_at:.0%}; kinds: {', '.join(kinds)}"
    )
    times, peaks = {k: [] for k in kinds}, {}
    for kind in kinds:  # warm-up (compiles the flex kernels), allocates the gradients, measures peak memory
        _, peaks[kind] = run(model, batch, kind, args, sync)
    for r in range(args.rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            times[kind].append(run(model, batch, kind, args, sync)[0])
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'kind':14} {'step s':>8} {'/ dpo':>7} {'/ dpop-chunked':>15} {'peak GiB':>9} {'/ dpo':>7}")
    for kind in kinds:
        peak = peaks[kind]
        memory = f"{peak / 2**30:9.2f} {peak / peaks['dpo']:7.3f}" if peak is not None else f"{'-':>9} {'-':>7}"
        print(
            f"{kind:14} {median[kind]:8.3f} {median[kind] / median['dpo']:7.3f} "
            f"{median[kind] / median['dpop-chunked']:15.3f} {memory}"
        )
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
