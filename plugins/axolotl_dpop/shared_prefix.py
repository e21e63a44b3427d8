"""Prefix-shared forward: one sequence per preference pair instead of TRL's ``[chosen; rejected]`` rows.

A *tree* is a chosen sequence followed, for each rejected sequence that goes with it, by the part after their
longest common prefix (equal tokens and equal completion mask). A rejected suffix keeps the positions it has in
its own sequence and attends to the shared prefix and to itself, never to the chosen suffix; a model's sliding
window is kept by position. Pairs of a micro-batch with the same chosen sequence (an ARC or HellaSwag question)
share one tree. Each hidden state that predicts a completion token goes through the head once, and its log-prob
counts in every sequence that has that label there: shared completion tokens in both sums, and the last shared
position predicts the first differing token of each answer. Edge cases need no special path: identical answers
give a tree without a suffix; a rejected answer that is a prefix of the chosen one has an empty suffix (all its
log-probs come from the chosen part); a chosen answer that is a prefix of the rejected one is followed by the
rest of the rejected one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields

import torch
from torch.utils.data import Sampler

from axolotl_dpop.chunked_logps import HeadStats, check_head, last_hidden_states, token_logps

# Attention implementations that take a custom mask (transformers' masking_utils builds it for each). The
# flash-attention kernels only know causal attention over padded or packed sequences.
SUPPORTED_ATTENTION = ("sdpa", "eager", "flex_attention")
_WINDOWED = {"full_attention": False, "sliding_attention": True}  # layer type -> keeps config.sliding_window


def check_attention(attn_implementation: str | None, flag: str | None = None) -> None:
    """Refuse an attention implementation that cannot take the tree mask (None: transformers' default, SDPA);
    ``flag``: axolotl's legacy flag that chose it, if any (``flash_attention``)."""
    if attn_implementation is not None and attn_implementation not in SUPPORTED_ATTENTION:
        chosen, fix = f"attn_implementation: {attn_implementation}", "set attn_implementation: sdpa"
        if flag:
            chosen, fix = f"{flag}: true ({chosen})", f"replace {flag}: true with attn_implementation: sdpa"
        raise ValueError(
            f"dpop_shared_prefix: {chosen} cannot take the tree attention mask (an answer that sees the shared "
            f"prefix but not the other answer); {fix} (flex_attention on a GPU) or set dpop_shared_prefix: false."
        )


def check_shared_prefix(model: torch.nn.Module) -> None:
    """Refuse a model the tree forward cannot run exactly: one line naming the key to change."""
    config = model.config
    check_attention(config._attn_implementation)
    unknown = set(getattr(config, "layer_types", None) or ()) - set(_WINDOWED)
    if unknown:
        raise ValueError(
            f"dpop_shared_prefix: {type(model).__name__} has {', '.join(sorted(unknown))} layers, whose mask the "
            "tree forward does not build; set dpop_shared_prefix: false."
        )


@dataclass
class Trees:
    """A micro-batch as trees (``n`` trees of ``L`` tokens) and where each log-prob comes from and goes to."""

    input_ids: torch.Tensor  # [n, L], right-padded
    position_ids: torch.Tensor  # [n, L] the token's position in its own sequence (0 on padding)
    branch: torch.Tensor  # [n, L] 0 in the chosen sequence, k in the k-th rejected suffix, -1 on padding
    visible: torch.Tensor  # [n, L] how many leading chosen tokens the token attends to (at most)
    hidden_index: torch.Tensor  # [N] flat index (tree * L + column) of the hidden state predicting each label
    labels: torch.Tensor  # [N]
    row: torch.Tensor  # [M] head row (into labels) ...
    sequence: torch.Tensor  # [M] ... and the row of the [chosen; rejected] batch whose sum it counts in

    def to(self, device) -> Trees:
        return Trees(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def tokens(self) -> int:
        """Tokens through the body (padding excluded)."""
        return int((self.branch >= 0).sum())


def _lcp(a: torch.Tensor, b: torch.Tensor, a_mask: torch.Tensor, b_mask: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = ((a[:n] != b[:n]) | (a_mask[:n] != b_mask[:n])).nonzero()
    return int(differ[0]) if len(differ) else n


def build_trees(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> Trees:
    """Trees (on the CPU) for a TRL preference batch ``[2B, T]`` (chosen rows first; padding dropped)."""
    ids, keep, completion = input_ids.cpu(), attention_mask.cpu().bool(), completion_mask.cpu().bool()
    half = ids.shape[0] // 2
    seqs = [(ids[i][keep[i]], completion[i][keep[i]]) for i in range(2 * half)]
    groups: dict[tuple, list[int]] = {}
    for i in range(half):
        groups.setdefault((tuple(seqs[i][0].tolist()), tuple(seqs[i][1].tolist())), []).append(i)

    columns = {f: [] for f in ("input_ids", "position_ids", "branch", "visible")}
    head_tree, head_col, labels, rows, sequences = [], [], [], [], []
    n_rows = 0

    def add_rows(tree: int, col: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        nonlocal n_rows
        head_tree.append(torch.full_like(col, tree))
        head_col.append(col)
        labels.append(label)
        n_rows += len(col)
        return torch.arange(n_rows - len(col), n_rows)

    def count_in(row: torch.Tensor, sequence: int) -> None:
        rows.append(row)
        sequences.append(torch.full_like(row, sequence))

    for tree, pairs in enumerate(groups.values()):
        chosen, chosen_mask = seqs[pairs[0]]
        length = len(chosen)
        parts = [(chosen, torch.arange(length), 0, length)]
        t = chosen_mask[1:].nonzero().squeeze(1)  # position t predicts completion token t + 1
        chosen_rows = add_rows(tree, t, chosen[t + 1])
        offset = length
        for k, pair in enumerate(pairs, start=1):
            rejected, rejected_mask = seqs[half + pair]
            shared = _lcp(chosen, rejected, chosen_mask, rejected_mask)
            count_in(chosen_rows, pair)
            count_in(chosen_rows[t + 1 < shared], half + pair)
            r = rejected_mask[1:].nonzero().squeeze(1)
            r = r[r + 1 >= shared]
            # The first differing token is predicted from the last shared position, in the chosen part.
            col = torch.where(r < shared, r, offset + r - shared)
            count_in(add_rows(tree, col, rejected[r + 1]), half + pair)
            parts.append((rejected[shared:], torch.arange(shared, len(rejected)), k, shared))
            offset += len(rejected) - shared
        columns["input_ids"].append(torch.cat([p[0] for p in parts]))
        columns["position_ids"].append(torch.cat([p[1] for p in parts]))
        columns["branch"].append(torch.cat([torch.full((len(p[0]),), p[2]) for p in parts]))
        columns["visible"].append(torch.cat([torch.full((len(p[0]),), p[3]) for p in parts]))

    width = max(len(x) for x in columns["input_ids"])
    # Padding is attended by nothing and attends to every real token before it (no empty softmax row).
    pads = {"input_ids": 0, "position_ids": 0, "branch": -1, "visible": width}
    padded = {f: torch.nn.utils.rnn.pad_sequence(columns[f], batch_first=True, padding_value=pads[f]) for f in columns}
    return Trees(
        **padded,
        hidden_index=torch.cat(head_tree) * width + torch.cat(head_col),
        labels=torch.cat(labels),
        row=torch.cat(rows),
        sequence=torch.cat(sequences),
    )


def tree_attention_mask(trees: Trees, config, dtype: torch.dtype = torch.float32):
    """The mask ``config._attn_implementation`` takes (bool for SDPA, additive for eager, a BlockMask for flex),
    from transformers' own mask builders; a dict by layer type when the model mixes full and sliding layers."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    check_attention(config._attn_implementation)
    branch, visible, position = trees.branch, trees.visible, trees.position_ids
    n, width = branch.shape

    def build(window: int | None):
        def allowed(b, h, q, kv):
            own = branch[b, kv] == branch[b, q]
            seen = (kv <= q) & (branch[b, kv] >= 0) & (own | (kv < visible[b, q]))
            return seen if window is None else seen & (position[b, q] - position[b, kv] < window)

        return ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation](
            batch_size=n,
            q_length=width,
            kv_length=width,
            mask_function=allowed,
            attention_mask=None,
            allow_is_causal_skip=False,
            dtype=dtype,
            device=branch.device,
            config=config,
        )

    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ())
    if len(types) > 1:
        return {t: build(window if _WINDOWED[t] else None) for t in types}
    return build(window if types <= {"sliding_attention"} else None)


def shared_prefix_logps(
    model, unwrapped, inputs: dict, chunk_size: int, with_stats=False, trees=None, check=False, **kw
):
    """Summed completion log-probs of a TRL preference batch through one tree forward.

    Takes the place of ``model(**[chosen; rejected] batch)`` plus the chunked head
    (``chunked_logps.completion_logps``) in the policy pass, the live reference pass and the precompute pass,
    and returns what that pair returns: ``(outputs, logps [2B] (chosen rows first, fp32), HeadStats or None)``.
    The stats have one entry per (completion token, sequence) as in the unshared path, so a shared token is
    counted once in each of its sequences (entropy, mean logit and accuracy sums come out the same).

    Args:
        model: what is called (DDP, a DeepSpeed engine, PEFT, or the bare model).
        unwrapped: the model under the wrappers (``accelerator.unwrap_model(model)``): config and head.
        inputs: the collator's batch: ``input_ids``, ``attention_mask``, ``completion_mask`` ``[2B, T]``.
        chunk_size / with_stats: as for the chunked head.
        trees: ``build_trees`` of the batch, when already built.
        check: run ``chunked_logps.check_head`` on this batch (the trainer's first).
        kw: further model keyword arguments.
    """
    device = inputs["input_ids"].device
    if trees is None:
        trees = build_trees(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
    trees = trees.to(device)
    mask = tree_attention_mask(trees, unwrapped.config, unwrapped.dtype)
    model_kwargs = {"input_ids": trees.input_ids, "attention_mask": mask, "position_ids": trees.position_ids}
    outputs, hidden = last_hidden_states(model, {**kw, **model_kwargs, "use_cache": False})
    if check:
        check_head(unwrapped.get_output_embeddings(), hidden, outputs.logits)
    out = token_logps(
        unwrapped.get_output_embeddings(),
        hidden.flatten(0, 1)[trees.hidden_index],
        trees.labels,
        chunk_size,
        with_stats,
    )
    # Summed in fp64: a sequence's tokens are scattered over the head rows, so the sum runs in their order.
    sums = out[0].new_zeros(inputs["input_ids"].shape[0], dtype=torch.float64)
    logps = sums.index_add(0, trees.sequence, out[0][trees.row].double()).to(out[0].dtype)
    if not with_stats:
        return outputs, logps, None
    _, entropy, logit_mean, argmax = out
    correct = argmax == trees.labels
    return outputs, logps, HeadStats(trees.sequence, entropy[trees.row], logit_mean[trees.row], correct[trees.row])


class GroupedBatchSampler(Sampler[list[int]]):
    """Micro-batches of whole groups, for question-level trees: ``keys[i]`` names pair ``i``'s group (e.g. its
    prompt and chosen answer); pairs with equal keys always land in one micro-batch, where
    :func:`shared_prefix_logps` gives them one tree. The loss is still one term per pair.

    What it changes: groups, not pairs, are shuffled (per epoch, from ``seed``), so a question's pairs are
    always consecutive within one micro-batch instead of spread over the epoch; groups are packed in that order
    into micro-batches of at most ``batch_size`` pairs, and a group larger than ``batch_size`` is a micro-batch
    of its own (so micro-batches can hold fewer, or more, pairs than ``batch_size``). Every pair is still seen
    once per epoch. With ``num_replicas`` processes, rank ``rank`` takes every ``num_replicas``-th micro-batch;
    the first micro-batches are repeated to give every rank as many (as accelerate's even batches do)."""

    def __init__(self, keys: Sequence[Hashable], batch_size: int, seed=0, shuffle=True, num_replicas=1, rank=0):
        groups: dict[Hashable, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
        self.groups = list(groups.values())
        self.batch_size, self.seed, self.shuffle, self.epoch = batch_size, seed, shuffle, 0
        self.num_replicas, self.rank = num_replicas, rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = range(len(self.groups))
        if self.shuffle:
            order = torch.randperm(len(self.groups), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        batches: list[list[int]] = [[]]
        for g in order:
            group = self.groups[int(g)]
            if batches[-1] and len(batches[-1]) + len(group) > self.batch_size:
                batches.append([])
            batches[-1] = batches[-1] + group
        batches = [b for b in batches if b]
        return batches + batches[: -len(batches) % self.num_replicas]

    def __iter__(self):
        return iter(self._batches()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(self._batches()) // self.num_replicas
