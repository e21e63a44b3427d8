"""The token-chunked log-prob head (dpop_chunked_logps) against the full-logits path, in fp32.

Exactness here means: summed log-probs, the loss and every logged metric within 1e-6 relative (bit-equal on
this CPU when the chunk size is a multiple of 8: the per-token values then come out of the same kernels),
and every parameter's gradient within 1e-6 relative (norm of the difference over the norm)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from axolotl_dpop.chunked_logps import HeadStats, check_head, completion_logps, last_hidden_states, token_logps
from tests.axolotl_runner import write_pairs
from tests.dpop_trainers import make_trainer

REL = 1e-6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.norm().item()
    return (a - b).norm().item() / scale if scale else (a - b).norm().item()


def full_logits_path(head, hidden, input_ids, completion_mask):
    """What TRL and DPOPTrainer's unchunked path compute: logits of every position, then the gathered sums."""
    from trl.trainer.utils import selective_log_softmax

    logits = head(hidden)[:, :-1]
    per_token = selective_log_softmax(logits, input_ids[:, 1:]).masked_fill(completion_mask[:, 1:] == 0, 0.0)
    return per_token.sum(dim=1), logits


def random_batch(batch=4, seq=41, hidden=24, vocab=67, seed=0):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, seq, hidden, generator=gen, requires_grad=True)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    prompt = torch.randint(3, seq // 2, (batch, 1), generator=gen)
    length = torch.randint(seq // 2, seq + 1, (batch, 1), generator=gen)
    position = torch.arange(seq).unsqueeze(0)
    completion_mask = ((position >= prompt) & (position < length)).long()  # prompt, completion, padding
    return states, input_ids, completion_mask


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 8, 13, 10_000])
def test_chunked_function_matches_the_full_logits(bias, chunk_size):
    torch.manual_seed(1)
    states, input_ids, completion_mask = random_batch()
    head = nn.Linear(24, 67, bias=bias)
    upstream = torch.randn(states.shape[0])

    expected, logits = full_logits_path(head, states, input_ids, completion_mask)
    (expected * upstream).sum().backward()
    expected_grads = [p.grad.clone() for p in (states, *head.parameters())]
    for p in (states, *head.parameters()):
        p.grad = None

    got, stats = completion_logps(head, states, input_ids, completion_mask, chunk_size, with_stats=True)
    (got * upstream).sum().backward()
    assert rel_err(got.detach(), expected.detach()) < REL
    for got_grad, want in zip((p.grad for p in (states, *head.parameters())), expected_grads):
        assert rel_err(got_grad, want) < REL
    # tokens outside the completion get no gradient at all, as in the full path
    assert torch.all(states.grad[:, :-1][completion_mask[:, 1:] == 0] == 0)

    with torch.no_grad():
        from trl.trainer.utils import entropy_from_logits

        mask = completion_mask[:, 1:].bool()
        assert isinstance(stats, HeadStats) and stats.row.numel() == int(mask.sum())
        assert rel_err(stats.entropy, entropy_from_logits(logits)[mask]) < REL
        assert rel_err(stats.logit_mean, logits[mask].mean(-1)) < REL
        assert torch.equal(stats.correct, logits[mask].argmax(-1) == input_ids[:, 1:][mask])


def test_chunked_head_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(11, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(9, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 9, (11,), generator=gen)

    def logps(h, w, b):
        return token_logps(lambda x: torch.nn.functional.linear(x, w, b), h, labels, 4)[0]

    assert torch.autograd.gradcheck(logps, (hidden, weight, bias))


def test_a_module_head_goes_through_checkpointing_and_matches():
    """A head that is not a plain nn.Linear (here LoRA on lm_head, as PEFT builds it) is called per chunk."""
    from peft import LoraConfig, get_peft_model

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(24, 67, bias=False)

    torch.manual_seed(2)
    toy = get_peft_model(Toy(), LoraConfig(r=4, target_modules=["lm_head"], lora_dropout=0.0))
    head = toy.base_model.model.lm_head
    assert not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward
    with torch.no_grad():
        head.lora_B["default"].weight.normal_()
    states, input_ids, completion_mask = random_batch()
    trainable = [p for p in toy.parameters() if p.requires_grad]

    expected, _ = full_logits_path(head, states, input_ids, completion_mask)
    expected.sum().backward()
    want = [p.grad.clone() for p in (states, *trainable)]
    for p in (states, *trainable):
        p.grad = None
    got, _ = completion_logps(head, states, input_ids, completion_mask, 8, with_stats=True)
    got.sum().backward()
    assert rel_err(got.detach(), expected.detach()) < REL
    for p, w in zip((states, *trainable), want):
        assert rel_err(p.grad, w) < REL


def test_models_that_transform_their_logits_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        final_logit_softcapping=0.05,  # well inside the random model's logits, so that it changes them
    )
    gemma = Gemma2ForCausalLM(config)
    outputs, hidden = last_hidden_states(gemma, {"input_ids": torch.randint(0, 32, (2, 6))})
    with pytest.raises(ValueError, match="differs from this model's logits .* set dpop_chunked_logps: false"):
        check_head(gemma.get_output_embeddings(), hidden, outputs.logits)


class ScaledLlama:
    """A Llama whose logits are multiplied by `lm_head_multiplier` (as Falcon-H1's are): a key no list names."""

    def forward(self, input_ids=None, logits_to_keep=0, **kwargs):
        outputs = super().forward(input_ids, logits_to_keep=logits_to_keep, **kwargs)
        outputs.logits = outputs.logits * self.config.lm_head_multiplier
        return outputs


@pytest.mark.parametrize(
    "precompute,shared",
    [(False, False), (True, False), (True, True)],
    ids=["training-step", "precompute-pass", "shared-forward-precompute-pass"],
)
def test_the_chunked_head_checks_itself_against_the_model(tmp_path, tiny_model_dir, pair_rows, precompute, shared):
    def scale(model):
        model.config.lm_head_multiplier = 0.25
        model.__class__ = type("ScaledLlamaForCausalLM", (ScaledLlama, type(model)), {})

    with pytest.raises(ValueError, match="differs from this model's logits .* set dpop_chunked_logps: false"):
        trainer = make_trainer(
            tmp_path, tiny_model_dir, pair_rows, chunked=True, shared=shared, precompute=precompute, edit_model=scale
        )
        trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader())))


# --- DPOPTrainer: chunked vs unchunked on the same batch ---------------------------------------------------


@pytest.fixture(scope="module")
def pair_rows(tmp_path_factory):
    path = write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", n=8)
    return [json.loads(line) for line in path.read_text().splitlines()]


def loss_metrics_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.item(), metrics, grads


@pytest.mark.parametrize(
    "variant,precompute,tie",
    [("full", False, False), ("full", False, True), ("lora", False, False), ("full", True, False)],
    ids=["full-ref-model", "tied-embeddings", "lora-adapter-disabled", "precomputed-ref"],
)
def test_trainer_chunked_equals_unchunked(tmp_path, tiny_model_dir, pair_rows, variant, precompute, tie):
    trainers = {
        chunked: make_trainer(
            tmp_path, tiny_model_dir, pair_rows, chunked=chunked, variant=variant, precompute=precompute, tie=tie
        )
        for chunked in (False, True)
    }
    batch = next(iter(trainers[False].get_train_dataloader()))
    if precompute:  # both passes' reference log-probs, before either trained
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            assert (
                rel_err(
                    torch.tensor(trainers[True].train_dataset[key]), torch.tensor(trainers[False].train_dataset[key])
                )
                < REL
            )
    (loss_u, metrics_u, grads_u), (loss_c, metrics_c, grads_c) = (
        loss_metrics_grads(trainers[c], batch) for c in (False, True)
    )
    assert metrics_u["dpop/active_fraction"] > 0, "the test should exercise the penalty"
    assert loss_c == pytest.approx(loss_u, rel=REL)
    assert (
        metrics_c.keys()
        == metrics_u.keys()
        >= {"entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy", "dpop/penalty", "rewards/margins"}
    )
    for key, value in metrics_u.items():
        assert metrics_c[key] == pytest.approx(value, rel=REL, abs=1e-7), key
    assert grads_c.keys() == grads_u.keys()
    worst = max(rel_err(grads_c[name], grads_u[name]) for name in grads_u)
    assert worst < REL, worst
