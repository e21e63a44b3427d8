"""The chunked log-prob head (dpop_chunked_logps) vs the full-logits DPOP step and axolotl's own DPO step.

One process, one seed, one synthetic batch of one pair (chosen + rejected: a short prompt, then completion
tokens) through the real trainers' ``compute_loss`` + backward, with a live reference model. Kinds:

  dpo           axolotl's DPO trainer (TRL's loss, full logits)
  dpop          DPOPTrainer, full logits (dpop_chunked_logps: false)
  chunked       DPOPTrainer, dpop_chunked_logps: true: the lm_head module per chunk of completion tokens under
                torch.utils.checkpoint (every head: plain, LoRA-wrapped, under DeepSpeed ZeRO-3)
  liger-dpo     axolotl's DPO with dpo_use_liger_kernel: Liger's fused-linear DPO, which chunks over pairs
                (compiled=False: no inductor on this CPU)  [memory only]

Memory: peak live-tensor bytes of one step at the issue's shape (vocabulary 152,064, sequence 2,048, one
pair, hidden 1,024, 2 layers) and at vocabulary 32,000. Counted without computing the large tensors' values
(see bench_common.LiveTensorBytes: allocation does not depend on them); checked against a real run on a
small shape first, every run.
Time: real compute, rounds interleaved (the order rotates every round, so machine load hits every kind
alike), medians over rounds (after a warm-up step on a tiny batch). A shorter sequence than the memory
shape (a 2,048-token step at vocabulary 152,064 costs minutes of this CPU), with the chunk size at half the
pair's completion tokens (two chunks, as at full length; these smaller chunks run the head matmuls ~15 %
slower per FLOP on this CPU than the full-logits path's, so the time ratios err against the chunked head). "Head" = the kind's step minus the body alone (the same policy forward + backward and
reference forward, without lm_head and loss), per round.

Smaug-72B projection: body and head forward FLOPs per token from the model's config and the measured head
ratio r: step ratio = (body + r·head) / (body + head), gradient checkpointing on (body: 4 passes for the
policy + 1 for the reference; head 3 + 1), and with precomputed reference log-probs as the 72B recipe
runs (body 4, head 3; r charged entirely to the policy's head: 1 + 4/3·(r − 1)).

    python benchmarks/bench_chunked_logps.py [--rounds 2 --time-seq 256]
Targets (issue): memory <= 0.35x the DPOP step; head time <= 1.40x; 72B step projection <= 1.02x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import torch
from bench_common import dpop_config_cls, peak_bytes, timed_steps

KINDS = ("dpo", "dpop", "chunked")
SMAUG_72B = {
    "hidden": 8192,
    "layers": 80,
    "intermediate": 24576,
    "vocab": 152064,
    "heads": 64,
    "kv_heads": 64,
    "seq": 2048,
}  # Qwen-72B architecture (moreh/MoMo-72B-lora-1.8.7-DPO's config)


def build_models(vocab: int, hidden: int, layers: int, seq: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 128),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=seq,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    reference = LlamaForCausalLM(config)
    reference.load_state_dict(policy.state_dict())
    if layers == 0:  # "head only": the embedding's dense V x H gradient is body cost, not head cost
        policy.model.embed_tokens.weight.requires_grad_(False)
    return policy, reference


def build_trainer(kind: str, policy, reference, chunk_size: int):
    from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer
    from datasets import Dataset

    from axolotl_dpop.trainer import DPOPTrainer
    from smaug.training.tiny_model import build_tokenizer

    args = dpop_config_cls()(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{kind}-"),
        per_device_train_batch_size=1,
        beta=0.3,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        dpop_chunked_logps=kind.startswith("chunked"),
        dpop_logps_chunk_size=chunk_size,
        use_liger_kernel=kind == "liger-dpo",
    )
    dataset = Dataset.from_list([{"prompt": "1 + 1 =", "chosen": " 2", "rejected": " 3"}])
    cls = AxolotlDPOTrainer if kind in ("dpo", "liger-dpo") else DPOPTrainer
    trainer = cls(policy, reference, args=args, train_dataset=dataset, processing_class=build_tokenizer())
    # The head's first-batch check against the model's logits is a one-off (and needs values, which the counted
    # memory mode does not compute): steps here are steps after it.
    trainer._head_checked = True
    if kind == "liger-dpo":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        trainer.liger_loss = LigerFusedLinearDPOLoss(beta=args.beta, compiled=False)  # no inductor on CPU
    trainer.model.train()
    return trainer


def synthetic_batch(vocab: int, seq: int, prompt: int, device) -> dict:
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (2, seq), generator=gen)  # [chosen; rejected]
    completion = torch.ones(2, seq, dtype=torch.long)
    completion[:, :prompt] = 0
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "completion_mask": completion}
    return {k: v.to(device) for k, v in batch.items()}


SKIP_COMPUTE_ABOVE = 2**20  # bytes: tensors this large are allocated but not computed while counting memory


def measure_memory(vocab, seq, hidden, layers, chunk_size, kinds, modes=("counted",)) -> dict[str, dict[str, int]]:
    """mode ("counted": large tensors not computed; "real") -> kind -> peak live-tensor bytes of one step."""
    policy, reference = build_models(vocab, hidden, layers, seq)
    peaks = {mode: {} for mode in modes}
    for kind in kinds:
        trainer = build_trainer(kind, policy, reference, chunk_size)
        batch = synthetic_batch(vocab, seq, seq // 16, trainer.accelerator.device)
        for mode in modes:
            peaks[mode][kind] = peak_bytes(
                trainer, batch, warm=False, skip_compute_above=SKIP_COMPUTE_ABOVE if mode == "counted" else None
            )
        del trainer
    return peaks


class BodyOnly:
    """The body's share of a step: policy forward + backward and reference forward, no lm_head, no loss."""

    def __init__(self, policy, reference):
        self.model, self.reference = policy, reference

    def compute_loss(self, model, batch):
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            self.reference.model(**kwargs)
        return model.model(**kwargs).last_hidden_state.float().square().mean()


def measure_time(vocab, seq, hidden, rounds, chunk_size) -> dict[str, list[tuple[float, float]]]:
    """kind -> per-round (wall, CPU) seconds of one step; "body" is BodyOnly on the same models."""
    policy, reference = build_models(vocab, hidden, 2, seq)
    batch = synthetic_batch(vocab, seq, seq // 16, policy.device)
    setups = {"body": BodyOnly(policy, reference)}
    setups.update({kind: build_trainer(kind, policy, reference, chunk_size) for kind in KINDS})
    order = list(setups)
    warm_up = synthetic_batch(vocab, 32, 2, policy.device)  # first calls (thread pools, lazy init), cheaply
    for kind in order:
        timed_steps(setups[kind], warm_up, 1)
    times = {kind: [] for kind in order}
    for round_index in range(rounds):
        shift = round_index % len(order)
        for kind in order[shift:] + order[:shift]:
            times[kind] += timed_steps(setups[kind], batch, 1)
    return times


def flops_per_token(hidden, layers, intermediate, vocab, heads, kv_heads, seq) -> tuple[float, float]:
    """(body, head) forward FLOPs per token: 2 x parameters of each matmul, + causal attention scores."""
    head_dim = hidden // heads
    attention_params = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    body = layers * (2 * (attention_params + 3 * hidden * intermediate) + 2 * seq * hidden)
    return float(body), float(2 * hidden * vocab)


def projected_step_ratio(head_ratio: float, precompute: bool) -> tuple[float, float]:
    """(step ratio, head share of the unchunked step's FLOPs) at Smaug-72B's shape, gradient checkpointing on."""
    body, head = flops_per_token(**SMAUG_72B)
    if precompute:
        body_total, head_total, ratio = 4 * body, 3 * head, 1 + 4 / 3 * (head_ratio - 1)
    else:
        body_total, head_total, ratio = 5 * body, 4 * head, head_ratio
    share = head_total / (body_total + head_total)
    return (body_total + ratio * head_total) / (body_total + head_total), share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=152_064)
    parser.add_argument("--small-vocab", type=int, default=32_000)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the plugin's default")
    parser.add_argument("--time-seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE

    chunk = args.chunk_size or DEFAULT_CHUNK_SIZE
    started = time.perf_counter()
    print(f"machine: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}; chunk size {chunk} completion tokens"
    )

    # 1. counting without computing the large tensors gives the peaks of a real run (small shape, every kind)
    check = dict(vocab=4096, seq=128, hidden=64, layers=1, chunk_size=48, kinds=KINDS + ("liger-dpo",))
    both = measure_memory(**check, modes=("real", "counted"))
    real, counted = both["real"], both["counted"]
    print(
        f"tracker check (vocab 4,096, seq 128, chunk 48): peaks counted without computing tensors >= 1 MiB == "
        f"real run: {real == counted} ({', '.join(f'{k} {real[k] / 2**20:.2f} MiB' for k in real)})"
    )
    if real != counted:
        raise SystemExit(f"tracker check failed: real {real} vs counted {counted}")
    print(f"  ({time.perf_counter() - started:.0f} s)")

    # 2. memory at the shape and at vocabulary 32,000
    print(
        f"\npeak live-tensor bytes of one step: 1 pair x {args.seq} tokens, hidden {args.hidden}, "
        f"{args.layers} layers, chunk {chunk} (weights excluded; their gradients included)"
    )
    ratios = {}
    for vocab in (args.vocab, args.small_vocab):
        peaks = measure_memory(vocab, args.seq, args.hidden, args.layers, chunk, KINDS + ("liger-dpo",))["counted"]
        ratios[vocab] = peaks["chunked"] / peaks["dpop"]
        print(f"  vocab {vocab:>7,}: " + ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in peaks.items()))
        print(
            f"    chunked / dpop = {peaks['chunked'] / peaks['dpop']:.3f}   chunked / dpo = "
            f"{peaks['chunked'] / peaks['dpo']:.3f}   liger-dpo / dpo = {peaks['liger-dpo'] / peaks['dpo']:.3f}"
        )
    print(
        f"  target: chunked / dpop <= 0.35 at vocab {args.vocab:,}: "
        f"{'met' if ratios[args.vocab] <= 0.35 else 'NOT met'} ({ratios[args.vocab]:.3f})"
    )
    print(f"  ({time.perf_counter() - started:.0f} s)")

    # 3. time, real compute, interleaved
    prompt = args.time_seq // 16
    time_chunk = args.time_seq - prompt  # two chunks over the pair's 2 x (time_seq - prompt) completion tokens
    print(
        f"\ntime: vocab {args.vocab:,}, 1 pair x {args.time_seq} tokens ({prompt} prompt), hidden {args.hidden}, "
        f"{args.layers} layers, chunk {time_chunk}, {args.rounds} rounds, medians"
    )
    times = measure_time(args.vocab, args.time_seq, args.hidden, args.rounds, time_chunk)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    head = {k: statistics.median(w - b for (w, _), (b, _) in zip(times[k], times["body"])) for k in KINDS}
    head_cpu = {k: statistics.median(c - b for (_, c), (_, b) in zip(times[k], times["body"])) for k in KINDS}
    print("  step  " + "  ".join(f"{k} {wall[k]:.2f}s (CPU {cpu[k]:.2f}s)" for k in times))
    print("  head  " + "  ".join(f"{k} {head[k]:.2f}s (CPU {head_cpu[k]:.2f}s)" for k in KINDS))
    head_ratio = {k: head[k] / head["dpop"] for k in KINDS}
    for k in ("chunked",):
        print(
            f"  {k}: head / dpop head = {head_ratio[k]:.3f} (CPU {head_cpu[k] / head_cpu['dpop']:.3f}), "
            f"/ dpo head = {head[k] / head['dpo']:.3f}; step / dpop step = {wall[k] / wall['dpop']:.3f} "
            f"(CPU {cpu[k] / cpu['dpop']:.3f}), / dpo step = {wall[k] / wall['dpo']:.3f} (CPU {cpu[k] / cpu['dpo']:.3f})"
        )
    print(f"  target: head <= 1.40x: chunked {'met' if head_ratio['chunked'] <= 1.40 else 'NOT met'}")
    print(f"  ({time.perf_counter() - started:.0f} s)")

    # 4. projection to Smaug-72B
    body, head = flops_per_token(**SMAUG_72B)
    print(f"\nSmaug-72B ({SMAUG_72B}): forward FLOPs/token body {body / 1e9:.1f} G, head {head / 1e9:.2f} G")
    for k in ("chunked",):
        for precompute in (False, True):
            ratio, share = projected_step_ratio(head_ratio[k], precompute)
            print(
                f"  {k:12} {'precomputed ref' if precompute else 'live reference '}: head share of the step "
                f"{share:.2%}, projected step ratio {ratio:.4f}  (target <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'})"
            )
    print(f"\nload at the end: {os.getloadavg()}; benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
