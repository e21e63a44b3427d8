"""The prefix-shared forward (axolotl_dpop.shared_prefix) against the unshared chunked path, in fp32.

Exact means: per-sequence log-probs, DPOP losses and rewards, the sums behind TRL's logit metrics and every
parameter's gradient within 1e-5 relative (norm of the difference over the norm), on tiny random Llama-,
Qwen2- (full and sliding layers mixed) and Mistral-shaped (sliding window) models, one micro-batch of pairs
with padding that holds a MetaMath-like pair, a pair sharing only its prompt, identical answers, each answer a
prefix of the other and two pairs with the same chosen answer (one tree)."""

from __future__ import annotations

import pytest
import torch

from axolotl_dpop.chunked_logps import completion_logps, last_hidden_states
from axolotl_dpop.loss import dpop_loss
from axolotl_dpop.shared_prefix import (
    GroupedBatchSampler,
    build_trees,
    check_attention,
    check_shared_prefix,
    shared_prefix_logps,
)

REL = 1e-5
VOCAB = 61


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.norm().item()
    return (a - b).norm().item() / scale if scale else (a - b).norm().item()


def tiny_model(arch: str, attn: str = "sdpa", lora: bool = False, checkpointing: bool = False):
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    config = {
        "llama": lambda: tf.LlamaConfig(**common),
        # layer 0 full attention, layer 1 a sliding window of 5: the mask goes in as a dict by layer type
        "qwen2": lambda: tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=5, max_window_layers=1),
        "mistral": lambda: tf.MistralConfig(**common, sliding_window=5),
    }[arch]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]))
    with torch.no_grad():  # LoRA's B starts at zero: move every trainable weight so that all get gradients
        for index, p in enumerate(p for p in model.parameters() if p.requires_grad):
            p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=torch.float32) + index).view_as(p))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def tokens(gen, n):
    return torch.randint(3, VOCAB, (n,), generator=gen).tolist()


def examples(seed=0):
    """prompt/chosen/rejected ids as TRL's tokenisation hands them to its collator."""
    gen = torch.Generator().manual_seed(seed)
    prompt, chosen = tokens(gen, 8), tokens(gen, 12)
    changed = [*chosen[:6], (chosen[6] + 1 - 3) % (VOCAB - 3) + 3, *chosen[7:]]  # one token of the answer changed
    other_prompt = tokens(gen, 5)
    other = tokens(gen, 9)
    return [
        {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": changed},
        {"prompt_ids": other_prompt, "chosen_ids": other, "rejected_ids": [other[0] % 50 + 4, *tokens(gen, 6)]},
        {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": tokens(gen, 4)},  # same tree as the first
        {"prompt_ids": other_prompt, "chosen_ids": tokens(gen, 7), "rejected_ids": []},
        {"prompt_ids": prompt[:3], "chosen_ids": other, "rejected_ids": other},  # identical answers
        {"prompt_ids": prompt[:4], "chosen_ids": chosen, "rejected_ids": chosen[:5]},  # rejected a prefix
        {"prompt_ids": prompt[:4], "chosen_ids": chosen[:5] + [1], "rejected_ids": chosen[:5] + [1] + other},
    ]


def collate(rows):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=0)(rows)


def unshared_logps(model, batch, with_stats=True):
    """The trainer's chunked path: [chosen; rejected] through the model, completion tokens through the head."""
    _, hidden = last_hidden_states(
        model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    )
    return completion_logps(
        model.get_output_embeddings(), hidden, batch["input_ids"], batch["completion_mask"], 8, with_stats
    )


def metric_sums(stats, n):
    """Per sequence: tokens, and the sums of entropy, mean logit and correct argmax (TRL's logit metrics)."""
    per_seq = torch.zeros(4, n, dtype=torch.float64)
    for i, value in enumerate((torch.ones_like(stats.entropy), stats.entropy, stats.logit_mean, stats.correct)):
        per_seq[i].index_add_(0, stats.row, value.double())
    return per_seq


def reference(model, batch):
    """Fixed reference log-probs 2 nats off the policy's, above them for every other pair (the DPOP penalty on
    there; away from its kink at 0, where the two paths' last-bit differences could pick different sides)."""
    with torch.no_grad():
        chosen, rejected = unshared_logps(model, batch, with_stats=False)[0].chunk(2)
    sign = torch.tensor([(-1.0) ** i for i in range(len(chosen))])
    return chosen + 2.0 * sign, rejected - 2.0 * sign


def step(model, batch, shared, ref):
    model.zero_grad(set_to_none=True)
    if shared:
        _, logps, stats = shared_prefix_logps(model, model, batch, 8, with_stats=True)
    else:
        logps, stats = unshared_logps(model, batch)
    chosen, rejected = logps.chunk(2)
    losses, chosen_rewards, rejected_rewards = dpop_loss(chosen, rejected, *ref, 0.3, 50.0)
    losses.mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    values = (logps.detach(), losses.detach(), chosen_rewards, rejected_rewards, metric_sums(stats, len(logps)))
    return values, grads


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("variant", ["full", "lora", "checkpointing"])
def test_shared_forward_matches_the_unshared_path(arch, variant):
    model = tiny_model(arch, lora=variant == "lora", checkpointing=variant == "checkpointing")
    batch = collate(examples())
    ref = reference(model, batch)
    want, want_grads = step(model, batch, False, ref)
    got, got_grads = step(model, batch, True, ref)
    for name, g, w in zip(("logps", "losses", "chosen rewards", "rejected rewards", "metric sums"), got, want):
        assert rel_err(g, w) < REL, name
    assert torch.equal(got[4][3], want[4][3])  # top-1 hits, counted
    assert got_grads.keys() == want_grads.keys() and len(got_grads) > 4
    for name, w in want_grads.items():
        assert w.norm() > 0, name
        assert rel_err(got_grads[name], w) < REL, name


def test_trees_share_the_common_prefix_and_merge_pairs_with_one_chosen_answer():
    rows = examples()
    batch = collate(rows)
    trees = build_trees(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    # 7 pairs, 6 trees: pairs 0 and 2 share prompt and chosen answer.
    assert trees.input_ids.shape[0] == 6
    lengths = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in rows]
    tree_tokens = [
        lengths[0] + 6 + 4,  # pair 0: differs at its 7th answer token (6 left); pair 2: its own 4 tokens
        lengths[1] + 7,  # differs at the first answer token
        lengths[3],  # rejected answer empty: the prompt is all of it
        lengths[4],  # identical answers
        lengths[5],  # rejected a prefix of the chosen
        lengths[6] + 9,  # chosen a prefix of the rejected: the rejected remainder follows
    ]
    assert trees.tokens == sum(tree_tokens)
    assert int(batch["attention_mask"].sum()) == sum(lengths) + sum(
        len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in rows
    )
    # The rejected suffix of pair 0 continues the positions of the shared prefix.
    assert trees.position_ids[0, lengths[0] : lengths[0] + 6].tolist() == list(range(14, 20))
    # A shared completion token goes through the head once and counts in both sums.
    completion = int(batch["completion_mask"][:, 1:].sum())
    assert len(trees.labels) < completion == len(trees.row)


def test_eager_attention_and_a_micro_batch_of_one_pair():
    model = tiny_model("llama", attn="eager")
    for rows in (examples(1), examples(2)[:1]):
        batch = collate(rows)
        ref = reference(model, batch)
        (want, *_), want_grads = step(model, batch, False, ref)
        (got, *_), got_grads = step(model, batch, True, ref)
        assert rel_err(got, want) < REL
        assert all(rel_err(got_grads[n], w) < REL for n, w in want_grads.items())


def test_flex_attention_forward_matches():
    """FlexAttention has no backward on the CPU: the precompute/reference pass (no gradients) only."""
    model = tiny_model("mistral", attn="flex_attention").eval()
    batch = collate(examples(3))
    with torch.no_grad():
        want, _ = unshared_logps(model, batch, with_stats=False)
        _, got, _ = shared_prefix_logps(model, model, batch, 8)
    assert rel_err(got, want) < REL


def test_attention_that_cannot_take_the_tree_mask_is_refused():
    with pytest.raises(ValueError, match="attn_implementation: flash_attention_2 .* set attn_implementation: sdpa"):
        check_attention("flash_attention_2")
    check_attention(None)  # transformers' default (SDPA)
    model = tiny_model("llama")
    check_shared_prefix(model)
    model.config.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(ValueError, match="chunked_attention layers"):
        check_shared_prefix(model)


def test_grouped_sampler_keeps_a_question_in_one_micro_batch_and_trees_stay_exact():
    keys = ["q0", "q0", "q0", "m1", "q2", "q2", "q2", "m3", "m4"]
    sampler = GroupedBatchSampler(keys, batch_size=3, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(keys)))
    assert len(sampler) == len(batches) and all(len(b) <= 3 for b in batches)
    for key in ("q0", "q2"):
        assert sum(any(keys[i] == key for i in b) for b in batches) == 1
    assert list(GroupedBatchSampler(keys, 3, seed=0)) == batches
    orders = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.add(tuple(map(tuple, sampler)))
    assert len(orders) > 1
    assert [len(b) for b in GroupedBatchSampler(keys, batch_size=1, shuffle=False)] == [3, 1, 3, 1, 1]
    # Two ranks: each takes every other micro-batch, and as many as the other (the first one again on rank 1)
    ranks = [list(GroupedBatchSampler(keys, 1, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks == [[[0, 1, 2], [4, 5, 6], [8]], [[3], [7], [0, 1, 2]]] and len(ranks[0]) == 3

    # ARC-like rows: one question, its chosen answer, three wrong ones; through the sampler, one tree each.
    gen = torch.Generator().manual_seed(5)
    rows = []
    for key in keys:
        if key.startswith("q") and rows and rows[-1]["key"] == key:
            rows.append({**rows[-1], "rejected_ids": tokens(gen, 3)})
        else:
            rows.append(
                {"key": key, "prompt_ids": tokens(gen, 6), "chosen_ids": tokens(gen, 4), "rejected_ids": tokens(gen, 5)}
            )
    model = tiny_model("qwen2")
    for b in batches:
        batch = collate([rows[i] for i in b])
        trees = build_trees(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        assert trees.input_ids.shape[0] == len({keys[i] for i in b})
        ref = reference(model, batch)
        (want, *_), _ = step(model, batch, False, ref)
        (got, *_), _ = step(model, batch, True, ref)
        assert rel_err(got, want) < REL


# --- Through DPOPTrainer: the shared forward (dpop_shared_prefix) against the default full-logits path ---------


@pytest.fixture(scope="module")
def arithmetic_rows(tmp_path_factory):
    """MetaMath-like pairs (one number of the answer changed); the first two questions with three wrong answers
    each and the third with five (ARC-like groups sharing prompt and chosen answer)."""
    import json

    from tests.axolotl_runner import write_pairs

    path = write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", n=8)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    wrong = {0: 2, 1: 2, 2: 4}  # more wrong answers of these questions
    return rows + [
        dict(rows[i], rejected=rows[i]["rejected"].replace("The answer", f"So {k} is"))
        for i, n in wrong.items()
        for k in range(1, n + 1)
    ]


def trainer_step(trainer, batch):
    from tests.plugin.test_chunked_logps import loss_metrics_grads

    return loss_metrics_grads(trainer, batch)


# Rewards and margins are differences of ~190-nat summed log-probs, which the two paths round differently in fp32
# (1-2 units in the last place), and can be near 0: they agree within 1e-5 relative or within what 1e-6 of the
# log-probs becomes in them (beta of make_trainer).
WEIGHT = {"rewards/chosen": 0.3, "rewards/rejected": 0.3, "rewards/margins": 0.6}


def assert_same_step(got, want, scale=1.0) -> float:
    """Asserts one step's equality; returns the fraction of pairs with the DPOP penalty on."""
    (loss_s, metrics_s, grads_s), (loss_u, metrics_u, grads_u) = got, want
    logps = 1e-6 * max(abs(metrics_u["logps/chosen"]), abs(metrics_u["logps/rejected"]))
    assert loss_s == pytest.approx(loss_u * scale, rel=REL)
    assert metrics_s.keys() == metrics_u.keys() >= {"entropy", "logits/chosen", "mean_token_accuracy", "dpop/penalty"}
    for key, value in metrics_u.items():
        assert metrics_s[key] == pytest.approx(value, rel=REL, abs=logps * WEIGHT.get(key, 1.0)), key
    assert grads_s.keys() == grads_u.keys()
    assert max(rel_err(grads_s[n] / scale, w) for n, w in grads_u.items()) < REL
    return metrics_u["dpop/active_fraction"]


@pytest.mark.parametrize(
    "variant,precompute",
    [("full", False), ("lora", False), ("full", True)],
    ids=["full-ref-model", "lora-adapter-disabled", "precomputed-ref"],
)
def test_trainer_shared_equals_the_full_logits_path(tmp_path, tiny_model_dir, arithmetic_rows, variant, precompute):
    """Policy pass, live reference pass (separate model or adapter disabled) and precompute pass."""
    from tests.dpop_trainers import make_trainer

    trainers = {
        shared: make_trainer(
            tmp_path,
            tiny_model_dir,
            arithmetic_rows,
            chunked=False,
            shared=shared,
            variant=variant,
            precompute=precompute,
        )
        for shared in (False, True)
    }
    if precompute:  # the precompute pass went through the shared forward
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            got, want = (torch.tensor(trainers[s].train_dataset[key]) for s in (True, False))
            assert rel_err(got, want) < REL
    active = [
        assert_same_step(trainer_step(trainers[True], batch), trainer_step(trainers[False], batch))
        for batch in trainers[False].get_train_dataloader()
    ]
    assert max(active) > 0, "the test should exercise the penalty"


def test_question_trees_through_the_trainer_keep_one_term_per_pair(tmp_path, tiny_model_dir, arithmetic_rows):
    """dpop_group_pairs: micro-batches of whole questions (one of 5 pairs on its own); each pair weighs
    1 / micro_batch_size (4 here)."""
    from tests.dpop_trainers import make_trainer

    grouped = make_trainer(tmp_path, tiny_model_dir, arithmetic_rows, chunked=False, shared=True, group_pairs=True)
    plain = make_trainer(tmp_path, tiny_model_dir, arithmetic_rows, chunked=False)
    loader = grouped.get_train_dataloader()
    batches = list(loader.batch_sampler)
    prompts = [row["prompt"] for row in grouped.train_dataset]
    assert sorted(i for b in batches for i in b) == list(range(len(arithmetic_rows)))
    for question in set(prompts[:3]):  # the questions with several pairs: one micro-batch each
        assert sum(any(prompts[i] == question for i in b) for b in batches) == 1
    assert sorted(len(b) for b in batches)[-2:] == [4, 5]
    active = [
        assert_same_step(trainer_step(grouped, b), trainer_step(plain, b), scale=len(b["input_ids"]) / 2 / 4)
        for b in loader
    ]
    assert max(active) > 0, "the test should exercise the penalty"


def test_a_router_auxiliary_loss_is_refused_with_the_shared_forward(tmp_path, tiny_model_dir, arithmetic_rows):
    """And batches with inputs the tree forward would drop (images)."""
    from tests.dpop_trainers import make_trainer

    def moe_like(model):  # TRL adds the router loss for a config with `output_router_logits`
        model.config.output_router_logits = False

    trainer = make_trainer(tmp_path, tiny_model_dir, arithmetic_rows, chunked=False, shared=True, edit_model=moe_like)
    batch = next(iter(trainer.get_train_dataloader()))
    assert trainer.aux_loss_enabled
    with pytest.raises(ValueError, match="router auxiliary loss.* set dpop_shared_prefix: false"):
        trainer.compute_loss(trainer.model, batch)
    trainer.aux_loss_enabled = False
    with pytest.raises(ValueError, match=r"batches with \['pixel_values'\] are not supported"):
        trainer.compute_loss(trainer.model, {**batch, "pixel_values": torch.zeros(1)})
