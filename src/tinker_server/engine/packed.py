"""Base weights pre-packed for oneDNN, for forwards without gradients on CPU.

Decoding multiplies a few rows (one per sequence) by every weight matrix of the
model, once per token. For such skinny products PyTorch's default CPU GEMM
reaches a fraction of the memory bandwidth; oneDNN's inner-product kernel on a
weight reordered once into its blocked layout runs them 1.2-2.8x faster on the
2-core AVX-512 machine of ``BENCHMARKS.md`` (the tied 49152 x 576 ``lm_head`` of
SmolLM2 at 8 rows: 19.7 ms -> 6.9 ms), and prefill-sized products 1.1-1.5x.

The packed copy is kept *beside* the plain weight, which training still uses
(autograd needs it), so the wrapped linear weights take twice the memory. Base
weights are frozen, so a packed copy never goes stale. Results equal
``F.linear`` up to float32 summation order (relative differences around 1e-6).

Used only where it is known to work: CPU tensors, float32 (bfloat16 where the
CPU has native bf16 support), and after :func:`_self_check` compared one packed
product with ``F.linear``; anything else keeps the plain path.
"""

from __future__ import annotations

import functools
import logging

import torch

__all__ = ["available_memory_bytes", "pack_weight", "pack_weights", "packed_linear", "packing_available"]

log = logging.getLogger(__name__)


def _ops_present() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    return all(hasattr(torch.ops.mkldnn, name) for name in ("_reorder_linear_weight", "_linear_pointwise"))


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W^T + bias`` with ``W`` packed by :func:`pack_weight`; ``x: (..., in)``. No autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def _self_check(dtype: torch.dtype) -> bool:
    """One packed product against ``F.linear``, at odd sizes; False if it fails or differs."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn((37, 53), generator=gen).to(dtype)
    x = torch.randn((2, 3, 53), generator=gen).to(dtype)
    bias = torch.randn(37, generator=gen).to(dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        got = packed_linear(x, packed, bias).float()
    except RuntimeError as exc:
        log.info("oneDNN packed weights unavailable (%s); using plain linear layers", exc)
        return False
    want = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    ok = got.shape == want.shape and bool(torch.allclose(got, want, rtol=tolerance, atol=tolerance))
    if not ok:
        log.warning("oneDNN packed linear disagrees with F.linear for %s; using plain linear layers", dtype)
    return ok


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether weights of this device and dtype can be packed (checked once per dtype)."""
    if device.type != "cpu" or not _ops_present():
        return False
    if dtype == torch.bfloat16:
        supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        if supported is None or not supported():
            return False
    elif dtype != torch.float32:
        return False
    return _self_check(dtype)


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The oneDNN-packed copy of a ``(out, in)`` weight, or ``None`` where packing is unavailable."""
    if not packing_available(weight.device, weight.dtype):
        return None
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux); ``None`` where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def pack_weights(weights: list[torch.Tensor], *, max_share_of_free_memory: float = 0.5) -> list[torch.Tensor | None]:
    """Packed copies of ``weights`` (``None`` for each one that cannot be packed).

    Nothing is packed when the copies would take more than ``max_share_of_free_memory``
    of the memory available now: a faster sampler is not worth running out of memory.
    """
    if not weights or not packing_available(weights[0].device, weights[0].dtype):
        return [None] * len(weights)
    need = sum(w.numel() * w.element_size() for w in weights)
    free = available_memory_bytes()
    if free is not None and need > max_share_of_free_memory * free:
        log.warning(
            "not packing %.2f GB of base weights for oneDNN: only %.2f GB of memory is available "
            "(sampling runs on the plain, slower path)",
            need / 1e9,
            free / 1e9,
        )
        return [None] * len(weights)
    return [pack_weight(w) for w in weights]
