"""DPOP vs DPO cost, measured in one process: same model, batch, seed; prints step-time and peak-memory ratios.

Baseline is axolotl's own DPO trainer (TRL's loss); DPOP is our DPOPTrainer on top of it. Timing
interleaves the two in rounds (so drift in machine load hits both alike) and compares medians of
forward+backward step times. Peak memory is the peak of live tensor bytes during one step: on CUDA
``torch.cuda.max_memory_allocated``, on CPU a dispatch-mode tracker of every tensor storage created.

    python benchmarks/bench_dpop_vs_dpo.py [--hidden 256 --layers 4 --batch 8 --rounds 7]
Targets (issue): DPOP / DPO <= 1.02 step time, <= 1.01 peak memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch
from bench_common import dpop_config_cls, peak_bytes, timed_steps


def build_trainer(kind: str, model_dir: str, dataset, args_kwargs: dict, lam: float):
    from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_dpop.trainer import DPOPTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cls = DPOPTrainer if kind == "dpop" else AxolotlDPOTrainer
    out = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    trainer = cls(
        model,
        ref,
        args=dpop_config_cls()(output_dir=out, dpop_lambda=lam, **args_kwargs),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.model.train()
    return trainer


def one_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--lam", type=float, default=50.0)
    args = parser.parse_args()

    from datasets import Dataset

    from smaug.data.metamath import build_metamath_pairs
    from smaug.data.synthetic import generate_synthetic_metamath
    from smaug.training.tiny_model import build_tiny_llama

    workdir = tempfile.mkdtemp(prefix="bench-dpop-")
    model_dir = str(
        build_tiny_llama(
            f"{workdir}/model", hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.hidden * 2
        )
    )
    pairs, _ = build_metamath_pairs(generate_synthetic_metamath(args.pairs * 2, seed=0), seed=0)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs[: args.pairs]])
    args_kwargs = dict(
        per_device_train_batch_size=args.batch,
        max_length=512,
        beta=0.3,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )

    trainers = {kind: build_trainer(kind, model_dir, dataset, args_kwargs, args.lam) for kind in ("dpo", "dpop")}
    batches = {kind: one_batch(t) for kind, t in trainers.items()}
    assert torch.equal(batches["dpo"]["input_ids"], batches["dpop"]["input_ids"]), "batches differ"
    tokens = int(batches["dpo"]["attention_mask"].sum())

    for kind, trainer in trainers.items():  # warm-up: allocator, kernels
        timed_steps(trainer, batches[kind], 2)
    times = {"dpo": [], "dpop": []}
    for round_index in range(args.rounds):
        order = ("dpo", "dpop") if round_index % 2 == 0 else ("dpop", "dpo")
        for kind in order:
            times[kind] += timed_steps(trainers[kind], batches[kind], args.steps_per_round)
    peaks = {kind: peak_bytes(trainer, batches[kind]) for kind, trainer in trainers.items()}

    med = {kind: statistics.median(wall for wall, _ in values) for kind, values in times.items()}
    med_cpu = {kind: statistics.median(cpu for _, cpu in values) for kind, values in times.items()}
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; model: hidden {args.hidden} x {args.layers} layers; batch {args.batch} pairs "
        f"({tokens} tokens incl. chosen+rejected); {len(times['dpo'])} timed steps each; torch {torch.__version__}"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'':6}{'median step wall (ms)':>22}{'median step CPU (ms)':>22}{'peak tensor MiB':>18}")
    for kind in ("dpo", "dpop"):
        print(f"{kind:6}{med[kind] * 1e3:22.2f}{med_cpu[kind] * 1e3:22.2f}{peaks[kind] / 2**20:18.2f}")
    print(
        f"DPOP/DPO step-time ratio: wall {med['dpop'] / med['dpo']:.4f}, CPU {med_cpu['dpop'] / med_cpu['dpo']:.4f}"
        "   (target <= 1.02)"
    )
    print(f"DPOP/DPO peak-memory ratio: {peaks['dpop'] / peaks['dpo']:.4f}   (target <= 1.01)")


if __name__ == "__main__":
    main()
