"""Loading a causal LM for the analysis tools (log-probs, MT-Bench, contamination) and scoring token log-probs."""

from __future__ import annotations

from smaug.common.errors import UserError

DTYPES = ("bfloat16", "float16", "float32", "auto")
BACKENDS = ("hf", "vllm")  # lm-eval model types; vllm only on GPU nodes


def resolve_device(device: str | None) -> str:
    """``device`` checked before any model loads; None or "auto": cuda when available, else cpu."""
    import torch

    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device!r}: smaug evaluates on cpu or cuda (or mps)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and (count == 0 or (parsed.index or 0) >= count):
        raise UserError(
            f"--device {device}: this machine has {count} CUDA device(s); use --device cpu or another index"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available on this machine")
    return device


def default_dtype(device: str | None = None) -> str:
    """bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX: elsewhere torch emulates it, a matmul
    measured 36x slower than in float32; eval/README.md), float32 otherwise."""
    import torch

    kind = torch.device(resolve_device(device)).type
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu: absent means no
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "bfloat16" if kind == "cuda" or (kind == "cpu" and native) else "float32"


def check_vllm(num_gpus: int) -> None:
    """vLLM installed and ``num_gpus`` CUDA devices visible, checked before anything loads."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "--backend vllm: vLLM is not installed in this environment; use the GPU image's vLLM environment "
            "(/opt/vllm, see eval/README.md) or --backend hf"
        )
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < num_gpus:
        raise UserError(f"--backend vllm needs {num_gpus} GPU(s) (--num-gpus / NUM_GPUS); {visible} visible")


def load_causal_lm(path: str, dtype: str | None = None, device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in (*DTYPES, None):
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device = resolve_device(device)  # before the weights load
    dtype = dtype or default_dtype(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    return model.to(device).eval()


def token_logprobs(
    model, sequences: list[tuple[list[int], int]], batch_size: int = 8, pad_id: int = 0, desc: str = "log-probs"
) -> list[list[float]]:
    """For each (input_ids, start >= 1): log p(input_ids[t] | input_ids[:t]) for t >= start. Batches of similar
    length, right-padded (causal attention: padding on the right does not change real positions); the
    log-softmax runs in float32 on the scored rows only, to bound memory."""
    import torch
    from tqdm.auto import tqdm

    if any(start < 1 for _, start in sequences):
        raise ValueError("the first token has no prediction; start must be >= 1")
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]), reverse=True)
    results: list[list[float]] = [[] for _ in sequences]
    with torch.inference_mode():
        for offset in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch = order[offset : offset + batch_size]
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.tensor([sequences[i][0] + [pad_id] * (width - len(sequences[i][0])) for i in batch])
            mask = torch.tensor([[1] * len(sequences[i][0]) + [0] * (width - len(sequences[i][0])) for i in batch])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(batch):
                seq, start = sequences[i]
                scores = logits[row, start - 1 : len(seq) - 1].float().log_softmax(-1)
                targets = torch.tensor(seq[start:], device=scores.device)
                results[i] = scores.gather(-1, targets[:, None])[:, 0].cpu().tolist()
    return results
