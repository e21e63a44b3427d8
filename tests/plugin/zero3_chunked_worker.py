"""One rank of the ZeRO-3 check of the chunked head and the prefix-shared forward (run by
tests/plugin/test_chunked_zero3.py under torchrun, gloo).

A tiny Llama is built under ``deepspeed.zero.Init`` (every parameter partitioned across the ranks: outside
its module's forward, ``lm_head.weight`` is an empty shard) and wrapped in a ZeRO-3 engine. One DPOP step is
taken with the full-logits head and, on further engines with the same weights, with the chunked head and with
the prefix-shared forward (pairs whose answers share a prefix); the
full gradients (``deepspeed.utils.safe_get_full_grad``) and the parameters after the optimizer step are
compared with each other and with plain PyTorch (no DeepSpeed); the second case ties the embeddings and
turns on the body's gradient checkpointing. Rank 0 writes the errors as JSON."""

from __future__ import annotations

import json
import sys

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import selective_log_softmax

from axolotl_dpop import ref_cache
from axolotl_dpop.chunked_logps import completion_logps, last_hidden_states
from axolotl_dpop.loss import dpop_loss
from axolotl_dpop.shared_prefix import shared_prefix_logps
from tests.cpu_deepspeed import prepare_cpu_deepspeed

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    # Every parameter partitioned; no prefetching or overlapped communication (gloo on CPU: keep it in order).
    "zero_optimization": {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        "reduce_bucket_size": 10_000,
        "overlap_comm": False,
        "stage3_prefetch_bucket_size": 0,
    },
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True, "weight_decay": 0.0}},
    "zero_allow_untested_optimizer": True,
}
VOCAB, SEQ = 96, 24


def build(config: LlamaConfig, bias: bool, checkpointing: bool = False) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config)
    if bias:
        model.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    return model


def batch():
    gen = torch.Generator().manual_seed(5)
    input_ids = torch.randint(0, VOCAB, (4, SEQ), generator=gen)  # [chosen x2; rejected x2]
    input_ids[2:, :14] = input_ids[:2, :14]  # each rejected answer shares its first tokens with the chosen one
    completion_mask, attention_mask = torch.zeros(4, SEQ, dtype=torch.long), torch.ones(4, SEQ, dtype=torch.long)
    for row, (start, end) in enumerate([(6, 24), (9, 20), (6, 22), (9, 24)]):
        completion_mask[row, start:end] = 1
        attention_mask[row, end:] = 0  # right padding
    return input_ids, attention_mask, completion_mask


def logps(model, unwrapped, mode: str):
    input_ids, attention_mask, completion_mask = batch()
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if mode == "shared":
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
        return shared_prefix_logps(model, unwrapped, inputs, chunk_size=8)[1]
    if mode == "chunked":
        _, hidden = last_hidden_states(model, kwargs)
        return completion_logps(unwrapped.get_output_embeddings(), hidden, input_ids, completion_mask, 8)[0]
    logits = model(**kwargs).logits[:, :-1]
    per_token = selective_log_softmax(logits, input_ids[:, 1:]).masked_fill(completion_mask[:, 1:] == 0, 0.0)
    return per_token.sum(dim=1)


def loss_of(values, reference):
    chosen, rejected = values.chunk(2)
    ref_chosen, ref_rejected = reference.chunk(2)
    return dpop_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3, lam=5.0)[0].mean()


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item() if b.norm() > 0 else (a - b).norm().item()


def run(tied: bool, bias: bool, checkpointing: bool = False) -> dict:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    plain = build(config, bias, checkpointing)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    with torch.no_grad():  # reference log-probs away from the policy's, so the DPOP penalty is on for a chosen row
        reference = logps(plain, plain, "full") + torch.tensor([0.4, -0.3, 0.2, -0.1])
    loss_of(logps(plain, plain, "full"), reference).backward()
    plain_grads = {n: p.grad.clone() for n, p in plain.named_parameters()}

    results, engines = {}, {}  # engines: the first stays referenced while the second is built and run
    for mode in ("full", "chunked", "shared"):
        with deepspeed.zero.Init(config_dict_or_path=DS_CONFIG):
            model = build(config, bias, checkpointing)
        head = model.get_output_embeddings()
        partitioned = head.weight.numel() == 0 and hasattr(head.weight, "ds_id")
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if dist.get_rank() == 0:
                model.load_state_dict(state)
        engine, *_ = deepspeed.initialize(
            model=model, config=DS_CONFIG, model_parameters=[p for p in model.parameters()]
        )
        loss = loss_of(logps(engine, engine.module, mode), reference)
        engine.backward(loss)
        grads = {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}
        engine.step()
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            after = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        engines[mode] = engine
        results[mode] = {"loss": loss.item(), "grads": grads, "after": after, "partitioned": partitioned}

    names = list(plain_grads)
    unchunked, chunked_, shared = results["full"], results["chunked"], results["shared"]
    return {
        "head_weight_was_an_empty_shard": all(r["partitioned"] for r in results.values()),
        "loss_rel_chunked_vs_unchunked": abs(chunked_["loss"] - unchunked["loss"]) / abs(unchunked["loss"]),
        "grad_rel_unchunked_vs_plain": max(rel(unchunked["grads"][n], plain_grads[n]) for n in names),
        "grad_rel_chunked_vs_plain": max(rel(chunked_["grads"][n], plain_grads[n]) for n in names),
        "grad_rel_chunked_vs_unchunked": max(rel(chunked_["grads"][n], unchunked["grads"][n]) for n in names),
        "param_rel_after_step": max(rel(chunked_["after"][n], unchunked["after"][n]) for n in names),
        "shared_loss_rel_vs_unchunked": abs(shared["loss"] - unchunked["loss"]) / abs(unchunked["loss"]),
        "shared_grad_rel_vs_plain": max(rel(shared["grads"][n], plain_grads[n]) for n in names),
        "shared_grad_rel_vs_unchunked": max(rel(shared["grads"][n], unchunked["grads"][n]) for n in names),
        "shared_param_rel_after_step": max(rel(shared["after"][n], unchunked["after"][n]) for n in names),
        "head_grad_norm": plain.get_output_embeddings().weight.grad.norm().item(),
        "params_moved": max(rel(unchunked["after"][n], state[n]) for n in names if n in state) > 0,
    }


def digests() -> dict:
    """The reference-cache digest of partitioned models equals the plain model's, and tells two weights apart;
    TRL's hash_module (its own precompute cache key) reads the empty shards and cannot."""
    from trl.trainer.utils import hash_module

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    ours, trl, plain_digests = [], [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        plain = build(config, bias=False)
        plain_digests.append(ref_cache.weights_digest(ref_cache.reference_tensors(plain)))
        with deepspeed.zero.Init(config_dict_or_path=DS_CONFIG):
            model = build(config, bias=False)
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if rank == 0:
                model.load_state_dict(plain.state_dict())
        ours.append(ref_cache.weights_digest(ref_cache.reference_tensors(model), rank, world, dist.all_gather_object))
        trl.append(hash_module(model))
    return {
        "digest_of_partitioned_equals_plain": ours == plain_digests,
        "digest_tells_weights_apart": ours[0] != ours[1],
        "trl_hash_module_tells_weights_apart": trl[0] != trl[1],
    }


def main() -> None:
    prepare_cpu_deepspeed()  # DeepSpeed on gloo reads unfinished async collectives otherwise (see there)
    deepspeed.init_distributed(dist_backend="gloo")
    report = {
        "world_size": dist.get_world_size(),
        "untied_with_bias": run(tied=False, bias=True),
        "tied_embeddings_gradient_checkpointing": run(tied=True, bias=False, checkpointing=True),
        "reference_digest": digests(),
    }
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    dist.barrier()


if __name__ == "__main__":
    main()
