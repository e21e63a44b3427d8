"""Sequence log-probs without the ``[2·batch, seq, vocab]`` logits: the model's output head applied to the last
hidden states of the completion tokens only, a chunk of tokens at a time under ``torch.utils.checkpoint``, so
that one chunk's logits are alive at a time and are recomputed in backward. Calling the head module keeps
PEFT adapters on it and lets DeepSpeed ZeRO-3's module hooks gather its partitioned weight and reduce its
gradient. Exact to the full-logits path up to summation order."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_SIZE = 1024  # completion tokens per chunk: 1024 × 152,064 × 4 B = 0.58 GiB of fp32 logits


@dataclass
class HeadStats:
    """Per completion token, detached: which row of the batch it is in, and the TRL logit metrics."""

    row: torch.Tensor  # [N] long, row in the [chosen; rejected] batch
    entropy: torch.Tensor  # [N] Shannon entropy of the token's distribution (nats)
    logit_mean: torch.Tensor  # [N] mean over the vocabulary of the token's logits
    correct: torch.Tensor  # [N] bool, argmax of the logits == the label


class _LogSoftmaxGather(torch.autograd.Function):
    """``log_softmax(x)[labels]`` keeping only ``x`` and the log-sum-exp for backward, which writes
    ``g·(onehot − softmax)`` into ``x`` itself: one chunk of logits alive in backward (autograd's logsumexp +
    gather keep three). ``x`` is the chunk's own logits, recomputed for backward and read by nothing else
    (an op that did keep it would raise on the version check, not compute wrong numbers)."""

    @staticmethod
    def forward(ctx, x, labels):
        lse = torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(x, labels, lse)
        return x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse, lse

    @staticmethod
    def backward(ctx, grad_logps, _grad_lse):
        x, labels, lse = ctx.saved_tensors
        g = grad_logps.unsqueeze(-1)
        grad_x = x.sub_(lse.unsqueeze(-1)).exp_().mul_(-g)
        grad_x.scatter_add_(-1, labels.unsqueeze(-1), g)
        return grad_x, None


def _chunk_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, with_stats: bool):
    # The log-softmax in fp32 (fp64 stays fp64), the head in its own dtype, as the model's logits are computed.
    x = head(hidden).to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    logps, lse = _LogSoftmaxGather.apply(x, labels)
    if not with_stats:
        return (logps,)
    # After the last op that saves a tensor for backward: checkpoint's recomputation stops before here
    # (early stop), so the stats cost the first forward only.
    with torch.no_grad():
        m, argmax = x.max(dim=-1)
        e = (x - m.unsqueeze(-1)).exp_()
        weighted = torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1)  # sum over V of e * x, no [c, V] temp
        return logps, lse - weighted / e.sum(dim=-1), x.mean(dim=-1), argmax


def token_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int, with_stats: bool = False):
    """Per-row ``log p(label)`` under ``head`` for ``hidden`` [N, H]; with stats also the entropy, mean logit and
    argmax per row (detached)."""
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (head, hidden[start : start + chunk_size], labels[start : start + chunk_size], with_stats)
        grad = torch.is_grad_enabled()
        pieces.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if grad else _chunk_logps(*args))
    return tuple(torch.cat(parts) for parts in zip(*pieces))


def completion_logps(
    head: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_stats: bool = False,
) -> tuple[torch.Tensor, HeadStats | None]:
    """Summed completion log-probs per row of ``hidden`` [B, T, H] (last hidden states, after the final norm), as
    TRL's ``selective_log_softmax`` path computes them (position t predicts token t + 1), and, if asked, the
    per-token stats of TRL's logit metrics."""
    shift_mask = completion_mask[:, 1:].bool()
    rows, cols = shift_mask.nonzero(as_tuple=True)
    selected = hidden[:, :-1][rows, cols]  # [N, H]: only tokens that count
    labels = input_ids[:, 1:][rows, cols]
    out = token_logps(head, selected, labels, chunk_size, with_stats)
    # Summed like the full-logits path ([B, T-1] with zeros, summed over T), so the sums match it bit for
    # bit whenever the per-token values do; the [B, T] tensor is tiny next to the logits.
    per_token = hidden.new_zeros(shift_mask.shape, dtype=out[0].dtype).index_put((rows, cols), out[0])
    sums = per_token.sum(dim=1)
    if not with_stats:
        return sums, None
    _, entropy, logit_mean, argmax = out
    return sums, HeadStats(row=rows, entropy=entropy, logit_mean=logit_mean, correct=argmax == labels)


def check_chunkable(model: nn.Module) -> None:
    """Refuse models whose full logits cannot be skipped; one line saying why."""
    if hasattr(model, "get_base_model"):  # PEFT: its forward passes **kwargs on to the transformers model
        model = model.get_base_model()
    forward = getattr(model, "forward", None)
    if forward is None or "logits_to_keep" not in inspect.signature(forward).parameters:
        raise ValueError(
            f"dpop_chunked_logps: {type(model).__name__}.forward takes no `logits_to_keep`, so the "
            "full logits cannot be skipped; set dpop_chunked_logps: false."
        )
    if model.get_output_embeddings() is None:
        raise ValueError(f"dpop_chunked_logps: {type(model).__name__} has no output embeddings (lm_head).")


def check_head(head: nn.Module, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """The chunked head stands in for the model's own: refuse when ``head`` on the last position's hidden states
    differs from the model's ``logits`` there (a scale, a soft cap, whatever the model does after its head)
    beyond the rounding of a bf16 matmul (1 % of the largest logit)."""
    with torch.no_grad():
        mine, theirs = head(hidden[:, -1:]).float(), logits[:, -1:].float()
        # A model that computes NaN is not this check's business.
        error, scale = ((mine - theirs).abs().nan_to_num(0.0).max().item(), theirs.abs().nan_to_num(0.0).max().item())
        if error > 1e-2 * (1.0 + scale):
            raise ValueError(
                f"dpop_chunked_logps: the output head on the last hidden states differs from this model's logits by "
                f"up to {error:.3g} (the model changes its logits after the head); set dpop_chunked_logps: false."
            )


def last_hidden_states(model: nn.Module, model_kwargs: dict):
    """``(outputs, last hidden states [B, T, H] after the final norm)`` of ``model`` (whatever wraps it), computing
    the logits of the last position only. The hidden states are kept for backward anyway (no extra memory)."""
    outputs = model(**model_kwargs, output_hidden_states=True, logits_to_keep=1)
    hidden = outputs.hidden_states[-1]
    outputs.hidden_states = None
    return outputs, hidden
