"""Sequence log-probs without the ``[2·batch, seq, vocab]`` logits: a token-chunked output head.

DPO and DPOP need, per sequence, the sum over completion tokens of ``log softmax(h_t W^T + b)[y_t]``: one
gathered value per token. This module computes it from the last hidden states ``h`` and the output
projection in chunks of ``chunk_size`` completion tokens, and recomputes each chunk's logits in backward,
so that at most one chunk of logits (``chunk_size × vocab``) is alive at a time instead of every token's.

* :class:`ChunkedLinearLogps` — the autograd Function for a plain ``nn.Linear`` head (with or without bias,
  tied or untied). Forward keeps only the hidden states and one log-sum-exp per token; backward recomputes
  the chunk's logits once (one more head matmul than autograd's path) and writes ``softmax − onehot`` into
  that same buffer, so a chunk costs one ``chunk × vocab`` fp32 buffer in backward and two in forward.
  The TRL metrics that need the full logits — entropy, mean logit, top-1 accuracy — come out of the same
  forward pass for the price of one exp and a few reductions per chunk.
* Any other head (a LoRA-wrapped ``lm_head``, PEFT's ``modules_to_save`` copy, a quantised layer) and any
  head under DeepSpeed ZeRO-3 goes through ``torch.utils.checkpoint`` (non-reentrant) per chunk, calling the
  module itself: adapters apply, and ZeRO-3's own module hooks gather the partitioned weight (an empty shard
  outside its module's forward) for each call and reduce its gradient. Reading ``lm_head.weight`` directly
  under ZeRO-3 would need a gather around forward *and* around the gradient's accumulation, which autograd
  runs after a custom Function's backward returns; the module call is what DeepSpeed supports.

Only completion tokens are sent through the head (prompt and padding tokens contribute nothing to the
sums), which the full-logits path cannot skip.

Exact to the full-logits path up to float summation order (tests: fp32 losses, metrics and every
parameter's gradient within 1e-6 relative). In bf16 the head matmul runs in bf16 like the model's own
``lm_head`` and the log-softmax in fp32 (TRL's full-logits path takes the log-softmax of bf16 logits).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_SIZE = 1024  # completion tokens per chunk: 1024 × 152,064 × 4 B = 0.58 GiB of fp32 logits

# Config attributes that put something between lm_head and the softmax; the chunked head would ignore them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class HeadStats:
    """Per completion token, detached: which row of the batch it is in, and the TRL logit metrics."""

    row: torch.Tensor  # [N] long, row in the [chosen; rejected] batch
    entropy: torch.Tensor  # [N] Shannon entropy of the token's distribution (nats)
    logit_mean: torch.Tensor  # [N] mean over the vocabulary of the token's logits
    correct: torch.Tensor  # [N] bool, argmax of the logits == the label


def _softmax_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp32 for the log-softmax of fp32/bf16/fp16 logits (fp64 stays fp64)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _chunk_lse_stats(x: torch.Tensor, labels: torch.Tensor, with_stats: bool):
    """From one chunk's fp32/fp64 logits [c, V] (overwritten): log-sum-exp, picked logit and, if asked, stats."""
    m, argmax = x.max(dim=-1)
    picked = x.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    logit_mean = x.mean(dim=-1) if with_stats else None
    x.sub_(m.unsqueeze(-1))  # x := x - max
    if with_stats:
        e = torch.exp(x)
        total = e.sum(dim=-1)
        # H = -sum p log p = log S - sum(e (x - m)) / S, with e = exp(x - m), S = sum e
        weighted = torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1)
        entropy = total.log() - weighted / total
        del e
    else:
        total = x.exp_().sum(dim=-1)
        entropy = None
    lse = m + total.log()
    return lse, picked, entropy, logit_mean, argmax


class ChunkedLinearLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[labels]`` per row of ``hidden`` [N, H], chunk by chunk.

    Returns ``(logps [N], entropy [N], logit_mean [N], argmax [N])``; the last three are detached (empty
    when ``with_stats`` is False). Gradients flow to ``hidden``, ``weight`` and ``bias``, through autograd's
    one accumulation per parameter (so DDP and ZeRO-1/2 gradient hooks see one gradient, as usual)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size: int, with_stats: bool):
        n = hidden.shape[0]
        acc = _softmax_dtype(hidden)
        logps = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        if with_stats:
            entropy = hidden.new_empty(n, dtype=acc)
            logit_mean = hidden.new_empty(n, dtype=acc)
            argmax = labels.new_empty(n)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            x = F.linear(hidden[start:end], weight, bias).to(acc)
            chunk_lse, picked, chunk_entropy, chunk_mean, chunk_argmax = _chunk_lse_stats(
                x, labels[start:end], with_stats
            )
            del x
            lse[start:end] = chunk_lse
            logps[start:end] = picked - chunk_lse
            if with_stats:
                entropy[start:end] = chunk_entropy
                logit_mean[start:end] = chunk_mean
                argmax[start:end] = chunk_argmax
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_size = chunk_size
        if not with_stats:
            empty = hidden.new_empty(0, dtype=acc)
            entropy, logit_mean, argmax = empty, empty, labels.new_empty(0)
        ctx.mark_non_differentiable(entropy, logit_mean, argmax)
        return logps, entropy, logit_mean, argmax

    @staticmethod
    def backward(ctx, grad_logps, *_unused):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight) if want_weight else None
        grad_bias = torch.zeros_like(bias) if want_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden.shape[0])
            h, g = hidden[start:end], grad_logps[start:end].to(lse.dtype)
            x = F.linear(h, weight, bias).to(lse.dtype)
            # d logp / d logits = onehot(label) - softmax, scaled by the incoming gradient; in place.
            x.sub_(lse[start:end].unsqueeze(-1)).exp_().mul_(-g.unsqueeze(-1))
            x.scatter_add_(-1, labels[start:end].unsqueeze(-1), g.unsqueeze(-1))
            grad_x = x.to(weight.dtype)
            del x
            if want_hidden:
                grad_hidden[start:end] = grad_x @ weight
            if want_weight:
                grad_weight.addmm_(grad_x.t(), h)
            if want_bias:
                grad_bias.add_(grad_x.sum(dim=0))
            del grad_x  # before the next chunk's logits exist
        return grad_hidden, grad_weight, grad_bias, None, None, None


class _LogSoftmaxGather(torch.autograd.Function):
    """``log_softmax(x)[labels]`` keeping only ``x`` and the log-sum-exp for backward, which writes
    ``g·(onehot − softmax)`` into one new buffer (autograd's logsumexp + gather keep three)."""

    @staticmethod
    def forward(ctx, x, labels):
        lse = torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(x, labels, lse)
        return x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse, lse

    @staticmethod
    def backward(ctx, grad_logps, _grad_lse):
        x, labels, lse = ctx.saved_tensors
        g = grad_logps.unsqueeze(-1)
        grad_x = (x - lse.unsqueeze(-1)).exp_().mul_(-g)
        grad_x.scatter_add_(-1, labels.unsqueeze(-1), g)
        return grad_x, None


def _module_chunk_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, with_stats: bool):
    x = head(hidden).to(_softmax_dtype(hidden))
    logps, lse = _LogSoftmaxGather.apply(x, labels)
    if not with_stats:
        return (logps,)
    # After the last op that saves a tensor for backward: checkpoint's recomputation stops before here
    # (early stop), so the stats cost the first forward only.
    with torch.no_grad():
        m, argmax = x.max(dim=-1)
        e = (x - m.unsqueeze(-1)).exp_()
        weighted = torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1)  # sum over V of e * x, no [c, V] temp
        entropy = lse - weighted / e.sum(dim=-1)
        return logps, entropy, x.mean(dim=-1), argmax


def _is_plain_linear(head: nn.Module) -> bool:
    return isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward


def _zero3_partitioned(head: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in head.parameters())


def token_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int, with_stats: bool = False):
    """Per-row ``log p(label)`` under ``head`` for ``hidden`` [N, H]; with stats also entropy, mean logit and
    argmax per row (detached). A plain ``nn.Linear`` head takes :class:`ChunkedLinearLogps`; any other
    module, and any head whose parameters ZeRO-3 partitions, is called per chunk under
    ``torch.utils.checkpoint`` (recomputed in backward), so that PEFT adapters apply and DeepSpeed's module
    hooks gather the weight for each call and reduce its gradient."""
    if _is_plain_linear(head) and not _zero3_partitioned(head):
        logps, entropy, logit_mean, argmax = ChunkedLinearLogps.apply(
            hidden, head.weight, head.bias, labels, chunk_size, with_stats
        )
        return (logps, entropy, logit_mean, argmax) if with_stats else (logps,)
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (head, hidden[start : start + chunk_size], labels[start : start + chunk_size], with_stats)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_module_chunk_logps, *args, use_reentrant=False))
        else:
            pieces.append(_module_chunk_logps(*args))
    return tuple(torch.cat(parts) for parts in zip(*pieces))


def completion_logps(
    head: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_stats: bool = False,
) -> tuple[torch.Tensor, HeadStats | None]:
    """Summed completion log-probs per row, as TRL's ``selective_log_softmax`` path computes them.

    Args:
        head: the model's output projection (``model.get_output_embeddings()``).
        hidden: last hidden states ``[B, T, H]`` (after the final norm).
        input_ids / completion_mask: ``[B, T]``; position ``t`` predicts token ``t + 1``.
        chunk_size: completion tokens per chunk of logits.
        with_stats: also return :class:`HeadStats` for TRL's logit metrics.

    Returns:
        ``(logps [B] float32, stats or None)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
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
    """Refuse models the chunked head would compute wrongly or cannot reach; one line saying why."""
    if hasattr(model, "get_base_model"):  # PEFT: its forward passes **kwargs on to the transformers model
        model = model.get_base_model()
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    for name in _LOGIT_TRANSFORMS:
        value = getattr(text_config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"dpop_chunked_logps: this model applies {name}={value} to its logits, which the "
                "chunked head does not; set dpop_chunked_logps: false."
            )
    forward = getattr(model, "forward", None)
    if forward is None or "logits_to_keep" not in inspect.signature(forward).parameters:
        raise ValueError(
            f"dpop_chunked_logps: {type(model).__name__}.forward takes no `logits_to_keep`, so the "
            "full logits cannot be skipped; set dpop_chunked_logps: false."
        )
    if model.get_output_embeddings() is None:
        raise ValueError(f"dpop_chunked_logps: {type(model).__name__} has no output embeddings (lm_head).")


def last_hidden_states(model: nn.Module, model_kwargs: dict):
    """Run ``model`` (through whatever wraps it: DDP, a DeepSpeed engine, PEFT) computing the logits of the
    last position only, and return ``(outputs, last hidden states [B, T, H] after the final norm)``.

    ``output_hidden_states`` hands back the tensors the body keeps for backward anyway (no extra memory);
    transformers ties ``hidden_states[-1]`` to the normed ``last_hidden_state``."""
    outputs = model(**model_kwargs, output_hidden_states=True, logits_to_keep=1)
    hidden = outputs.hidden_states[-1]
    outputs.hidden_states = None
    return outputs, hidden
