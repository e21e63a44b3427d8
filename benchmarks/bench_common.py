"""What the benchmarks share: the peak-live-tensor-bytes tracker and the step/timing helpers.

Peak memory is the peak of live tensor bytes during one step: on CUDA ``torch.cuda.max_memory_allocated``,
on CPU a dispatch-mode tracker of every tensor storage created inside it (weights created before are not
counted; gradients, activations and logits are)."""

from __future__ import annotations

import dataclasses
import os
import time
import weakref

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_map  # noqa: E402


def dpop_config_cls():
    """axolotl's DPO training arguments with the plugin's fields, as axolotl merges them when the plugin is listed."""
    from axolotl.core.trainers.dpo.args import AxolotlDPOConfig

    from axolotl_dpop.args import DPOPTrainingArgs

    @dataclasses.dataclass
    class Args(DPOPTrainingArgs, AxolotlDPOConfig):
        pass

    return Args


class LiveTensorBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages alive (created inside the mode) and their peak.

    ``skip_compute_above=N`` (bytes) does not compute ops that read or write a tensor of N bytes or more:
    it returns uninitialised tensors of the shapes, strides and dtypes the op's meta kernel gives (in-place
    and ``out=`` ops return their target untouched; views, ops without a meta kernel and ops whose output
    shape depends on values are computed for real). Which tensors exist, and when, does not depend on the
    values in the large ones (the masks that decide shapes are small inputs), so the peak is the same at a
    fraction of the time; ``bench_chunked_logps.py`` checks that against a real run on every invocation.

    With ``classify`` (tensor -> name or None), also per class: ``live_by[name]`` and ``peak_by[name]``
    (``bench_memory_plan.py`` splits logits from the rest this way)."""

    def __init__(self, skip_compute_above: int | None = None, classify=None):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.skip_compute_above = skip_compute_above
        self._seen: set[int] = set()
        self.classify = classify
        self.live_by: dict[str, int] = {}
        self.peak_by: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self._without_compute(func, args, kwargs) if self.skip_compute_above is not None else None
        if out is None:
            out = func(*args, **kwargs)
        # Views and in-place results share an input's storage: not an allocation (and a view of a weight
        # made before the mode, e.g. lm_head.weight.t(), must not count the weight).
        inputs = {
            a.untyped_storage().data_ptr()
            for a in tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor) and a.device.type != "meta"
        }
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen and key not in inputs:
                    self._seen.add(key)
                    size = storage.nbytes()
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    name = self.classify(tensor) if self.classify else None
                    if name is not None:
                        self.live_by[name] = self.live_by.get(name, 0) + size
                        self.peak_by[name] = max(self.peak_by.get(name, 0), self.live_by[name])
                    weakref.finalize(storage, self._free, key, size, name)
        return out

    def _without_compute(self, func, args, kwargs):
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if not tensors or any(a.device.type == "meta" for a in tensors):
            return None
        schema = func._schema
        in_place = schema.name.endswith("_") and len(schema.returns) == 1
        out_variant = schema.overload_name.startswith("out")
        if ("view" in schema.name or any(r.alias_info is not None for r in schema.returns)) and not (
            in_place or out_variant
        ):
            return None  # a view (also _unsafe_view, which has no alias annotation): costs nothing, must alias
        if schema.is_mutable and not (in_place or out_variant):
            return None
        try:
            meta_args, meta_kwargs = tree_map(
                lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a, (args, kwargs)
            )
            meta_out = func(*meta_args, **meta_kwargs)
        except Exception:  # no meta kernel, or a value-dependent output shape: compute for real
            return None
        sizes = [a.untyped_storage().nbytes() for a in tensors]
        sizes += [m.numel() * m.element_size() for m in tree_flatten(meta_out)[0] if isinstance(m, torch.Tensor)]
        if max(sizes) < self.skip_compute_above:
            return None
        if in_place:
            return args[0]
        if out_variant:
            return kwargs["out"]
        device = tensors[0].device
        return tree_map(
            lambda m: (
                torch.empty_strided(m.shape, m.stride(), dtype=m.dtype, device=device)
                if isinstance(m, torch.Tensor)
                else m
            ),
            meta_out,
        )

    def reset_peaks(self) -> None:
        self.peak = self.live
        self.peak_by = dict(self.live_by)

    def _free(self, key, size, name=None):
        self._seen.discard(key)
        self.live -= size
        if name is not None:
            self.live_by[name] -= size


def step(trainer, batch):
    """One forward + backward of the trainer's loss (no optimizer), gradients freed first."""
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()


def timed_steps(trainer, batch, n: int) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds per step; CPU time is the steadier number on a shared machine."""
    times = []
    for _ in range(n):
        wall, cpu = time.perf_counter(), time.process_time()
        step(trainer, batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def peak_bytes(trainer, batch, warm: bool = True, skip_compute_above: int | None = None) -> int:
    """Peak live tensor bytes of one step (after a warm-up step unless ``warm`` is False)."""
    if warm:
        step(trainer, batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(trainer, batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with LiveTensorBytes(skip_compute_above=skip_compute_above) as tracker:
        step(trainer, batch)
    return tracker.peak
