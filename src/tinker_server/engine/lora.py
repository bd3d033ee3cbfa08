"""Many LoRA adapters on one frozen base model, routed per batch row.

Every linear layer an adapter may target is replaced, once, by a
:class:`LoraLinear` that wraps the original ``nn.Linear``. The adapters
themselves are plain :class:`Adapter` objects (their own ``nn.Parameter`` pairs,
gradients and optimizer state); a layer holds none of them. Before a forward
pass the caller says which adapter serves each batch row::

    with router.route([adapter_a, adapter_a, None, adapter_b]):
        hidden = decoder(input_ids)            # (4, T, H)

Rows routed to ``None`` get the base model's output. For a row served by
adapter ``a`` a targeted layer computes::

    y = x W^T + (alpha / r) * (x A^T) B^T       A: (r, in), B: (out, r)

with ``alpha = LORA_ALPHA = 32``. ``A`` starts kaiming-uniform (bound
``1/sqrt(in)``, seeded by ``LoraSpec.seed``), ``B`` starts at zero, so a new
adapter leaves the model unchanged. Base weights never require gradients.
Public ids are strings kept by the engine; adapters have no slot numbers.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserInputError
from .messages import LoraSpec
from .packed import packed_linear
from .rules import MAX_LORA_RANK, check_lora_spec

__all__ = [
    "ATTN_MODULES",
    "LORA_ALPHA",
    "MAX_LORA_RANK",
    "MLP_MODULES",
    "UNEMBED_MODULES",
    "Adapter",
    "LoraLinear",
    "Router",
    "TESTED_ARCHITECTURES",
    "architecture_problem",
    "attach_lora",
    "new_adapter",
    "peft_key",
]

LORA_ALPHA = 32.0
# LoRA targets by the short name of a linear layer: the one table for every
# architecture, since the names mean the same wherever they appear. Llama, SmolLM,
# Qwen2/2.5/3, Mistral and Gemma 2/3 use q/k/v/o and gate/up/down; Phi-3 fuses
# q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj`` (PEFT targets those by
# the same names). ``train_attn`` / ``train_mlp`` / ``train_unembed`` pick a group.
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj")
UNEMBED_MODULES = ("lm_head",)
ALL_TARGETS = ATTN_MODULES + MLP_MODULES + UNEMBED_MODULES
# Architectures (``config.model_type``) checked end to end by tests/engine/test_architectures.py.
# Any other causal LM with attention and MLP linear layers named as above loads too.
TESTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3")


def architecture_problem(model: nn.Module) -> str | None:
    """Why LoRA cannot serve ``model`` (a loaded HF causal LM), or ``None`` when it can.

    It can when the model has attention and MLP linear layers with names from
    :data:`ATTN_MODULES` and :data:`MLP_MODULES` (wrapped or not) and an ``lm_head``.
    """
    found: set[str] = set()
    for path, module in model.named_modules():
        if isinstance(module, (nn.Linear, LoraLinear)):
            found.add(path.rsplit(".", 1)[-1])
    missing = [what for what, names in (("attention", ATTN_MODULES), ("MLP", MLP_MODULES)) if not found & set(names)]
    if missing:
        return (
            f"it has no {' and no '.join(missing)} linear layers LoRA can target "
            f"(attention: {', '.join(ATTN_MODULES)}; MLP: {', '.join(MLP_MODULES)})"
        )
    if not isinstance(getattr(model, "lm_head", None), (nn.Linear, LoraLinear)):
        return "it has no linear lm_head"
    return None


def peft_key(path: str, which: str) -> str:
    """PEFT's state-dict key, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    return f"base_model.model.{path}.lora_{which}.weight"


@dataclass(eq=False)
class Adapter:
    """One LoRA adapter: its spec, per-layer parameters and optimizer state.

    ``weights`` maps a layer path (e.g. ``model.layers.0.mlp.up_proj``) to
    ``(A, B)`` with ``A: (r, in)`` and ``B: (out, r)``, float32 leaf parameters.
    ``frozen`` adapters (sampler snapshots) cannot be trained.
    """

    spec: LoraSpec
    scaling: float
    weights: dict[str, tuple[nn.Parameter, nn.Parameter]]
    frozen: bool = False
    optim_step: int = 0
    optim_state: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # Low-precision copies of the weights for forwards without gradients on a bf16/fp16
    # base: {layer path: (version key, A, B)} (see _compute_copies).
    compute_cache: dict[str, tuple[tuple[object, ...], torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under their PEFT key names, in a fixed order."""
        for path, (a, b) in self.weights.items():
            yield peft_key(path, "A"), a
            yield peft_key(path, "B"), b

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def reset_optimizer(self) -> None:
        self.optim_step = 0
        self.optim_state = {}


class Router:
    """Holds the row -> adapter assignment of the forward pass in progress."""

    def __init__(self) -> None:
        self.groups: list[tuple[Adapter, RowSelection]] = []

    @contextlib.contextmanager
    def route(self, row_adapters: Sequence[Adapter | None], device: torch.device | str = "cpu") -> Iterator[None]:
        """Route batch row ``i`` to ``row_adapters[i]`` (``None``: base model only)."""
        previous = self.groups
        self.groups = _group_rows(row_adapters, torch.device(device))
        try:
            yield
        finally:
            self.groups = previous


# The rows of one adapter: None (every row), a slice (consecutive rows), or row indices.
RowSelection = torch.Tensor | slice | None


def _group_rows(row_adapters: Sequence[Adapter | None], device: torch.device) -> list[tuple[Adapter, RowSelection]]:
    rows_of: dict[int, list[int]] = {}
    adapter_of: dict[int, Adapter] = {}
    for row, adapter in enumerate(row_adapters):
        if adapter is None:
            continue
        rows_of.setdefault(id(adapter), []).append(row)
        adapter_of[id(adapter)] = adapter
    groups: list[tuple[Adapter, RowSelection]] = []
    for key, rows in rows_of.items():
        if len(rows) == len(row_adapters):
            groups.append((adapter_of[key], None))  # all rows: no gather / scatter
        elif rows[-1] - rows[0] + 1 == len(rows):
            groups.append((adapter_of[key], slice(rows[0], rows[-1] + 1)))  # consecutive rows
        else:
            groups.append((adapter_of[key], torch.tensor(rows, dtype=torch.long, device=device)))
    return groups


class LoraLinear(nn.Module):
    """``nn.Linear`` plus the LoRA deltas of whichever adapters the router assigns.

    Input ``x: (B, ..., in)``; output ``(B, ..., out)``. Rows are the first dimension.
    """

    def __init__(self, base: nn.Linear, path: str, router: Router) -> None:
        super().__init__()
        self.base = base
        self.path = path
        self.in_features = base.in_features
        self.out_features = base.out_features
        self._router = router  # plain attribute: not a submodule, not in state_dict
        # oneDNN-packed copy of the frozen base weight, used by forwards without gradients
        # (set by the engine, see .packed); None: the plain path.
        self.packed: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects e.g. lm_head.weight
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Everything runs on 2-D (tokens, features) views: on CPU a 3-D input to a Linear
        # whose weight is frozen or small takes a bmm path that copies the transposed
        # weight on every call (for a LoRA B of lm_head that is megabytes per token).
        groups = self._router.groups
        if groups and all(isinstance(rows, slice) for _, rows in groups):
            return self._forward_segments(x)
        flat = x.reshape(-1, x.shape[-1])
        out = self._base(flat)
        for adapter, rows in groups:
            pair = adapter.weights.get(self.path)
            if pair is None:
                continue
            # Mixed precision: A and B are float32 master weights (AdamW updates them and
            # its moments in float32); with a bf16/fp16 base the two LoRA products run in
            # the activation dtype on copies of A and B cast down, and autograd casts their
            # gradients back up, so .grad accumulates in float32. Measured (SmolLM2 bf16,
            # 8 x 128 tokens, rank 32, a 2-core Xeon with AMX-BF16): 2.0 s per training step,
            # against 2.8 s when x is cast up to float32 for the low-rank path instead.
            # A float32 base makes the casts no-ops.
            a, b = _compute_copies(adapter, self.path, *pair, out.dtype)
            if rows is None:
                # out += scaling * (x A^T) B^T in one fused product, in place: out is this
                # layer's fresh output, which no backward needs (and not a view).
                out.addmm_(torch.mm(flat.to(out.dtype), a.t()), b.t(), alpha=adapter.scaling)
                continue
            if isinstance(rows, slice):  # consecutive rows beside scattered ones: index them too
                rows = torch.arange(rows.start, rows.stop, device=x.device)
            xs = x.index_select(0, rows).reshape(-1, x.shape[-1]).to(out.dtype)
            # Scale the rank-r intermediate, not the (wider) output.
            delta = torch.mm(torch.mm(xs, a.t()) * adapter.scaling, b.t())
            per_row = out.view(x.shape[0], -1, self.out_features)
            out = per_row.index_add(0, rows, delta.view(len(rows), -1, self.out_features)).view(out.shape)
        return out.view(*x.shape[:-1], self.out_features)

    def _base(self, flat: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and not torch.is_grad_enabled():
            return packed_linear(flat, self.packed, self.base.bias)
        return self.base(flat)

    def _forward_segments(self, x: torch.Tensor) -> torch.Tensor:
        """Several adapters, each on consecutive rows (how a batch of several runs' requests
        is laid out): each segment computes its base and LoRA products together, and the
        segments are joined once. Adding each adapter's delta into the whole output instead
        costs a copy of all of it per adapter, forward and backward (for lm_head, tokens x
        vocabulary floats each time), which made a batch of 4 runs slower than 4 passes."""
        rows = x.shape[0]
        spans = sorted(
            ((rows_.start, rows_.stop, adapter) for adapter, rows_ in self._router.groups if isinstance(rows_, slice)),
            key=lambda span: span[0],
        )
        # Consecutive row ranges covering the batch, each with its adapter or None; cut with
        # one split (its backward joins the gradients once, where slicing would allocate a
        # zero-filled gradient of the whole input per range).
        ranges: list[tuple[int, Adapter | None]] = []
        position = 0
        for start, stop, adapter in spans:
            if start > position:
                ranges.append((start - position, None))
            ranges.append((stop - start, adapter))
            position = stop
        if position < rows:
            ranges.append((rows - position, None))
        per_row = x.reshape(rows, -1, x.shape[-1])
        pieces: list[torch.Tensor] = []
        for segment, (_, owner) in zip(per_row.split([n for n, _ in ranges]), ranges, strict=True):
            flat = segment.reshape(-1, x.shape[-1])
            out = self._base(flat)
            pair = None if owner is None else owner.weights.get(self.path)
            if owner is not None and pair is not None:
                a, b = _compute_copies(owner, self.path, *pair, out.dtype)
                # A fresh tensor (not a view): adding in place copies nothing, here or in backward.
                out.addmm_(torch.mm(flat.to(out.dtype), a.t()), b.t(), alpha=owner.scaling)
            pieces.append(out)
        joined = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return joined.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, in={self.in_features}, out={self.out_features}"


def _compute_copies(
    adapter: Adapter, path: str, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` and ``B`` in ``dtype`` for one layer's products (themselves when already in it).

    With autograd on, a fresh cast (part of the graph). Without (sampling, forward-only
    passes), a copy cached on the adapter and reused until a parameter changes in place
    (its version counter moves) or is replaced; decoding would otherwise cast every
    adapter layer once per token.
    """
    if a.dtype == dtype and b.dtype == dtype:
        return a, b
    if torch.is_grad_enabled():
        return a.to(dtype), b.to(dtype)
    key = (a.data_ptr(), a._version, b.data_ptr(), b._version, dtype)
    cached = adapter.compute_cache.get(path)
    if cached is None or cached[0] != key:
        cached = (key, a.detach().to(dtype), b.detach().to(dtype))
        adapter.compute_cache[path] = cached
    return cached[1], cached[2]


def attach_lora(model: nn.Module, router: Router) -> dict[str, LoraLinear]:
    """Replace every targetable ``nn.Linear`` of ``model`` by a :class:`LoraLinear`.

    Returns ``{layer path: LoraLinear}`` in module order. Weight tying (e.g. a
    tied ``lm_head``) is untouched: the wrapped ``nn.Linear`` keeps its tensor.
    """
    found = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear) and path.rsplit(".", 1)[-1] in ALL_TARGETS
    ]
    layers: dict[str, LoraLinear] = {}
    for path, module in found:
        parent_path, _, child_name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        wrapped = LoraLinear(module, path, router)
        setattr(parent, child_name, wrapped)
        layers[path] = wrapped
    return layers


def targeted(spec: LoraSpec) -> tuple[str, ...]:
    """Short names of the layers the spec targets."""
    names: tuple[str, ...] = ()
    if spec.train_attn:
        names += ATTN_MODULES
    if spec.train_mlp:
        names += MLP_MODULES
    if spec.train_unembed:
        names += UNEMBED_MODULES
    return names


def new_adapter(layers: dict[str, LoraLinear], spec: LoraSpec, device: torch.device | str) -> Adapter:
    """A freshly initialised adapter (``A`` kaiming-uniform from the seed, ``B = 0``).

    The same seed gives bit-identical weights: ``A`` matrices are drawn in layer
    order from one CPU ``torch.Generator`` seeded with ``spec.seed``.
    """
    check_lora_spec(spec)
    names = set(targeted(spec))
    seed = spec.seed if spec.seed is not None else secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed % (2**63))
    weights: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    for path, layer in layers.items():
        if path.rsplit(".", 1)[-1] not in names:
            continue
        bound = 1.0 / math.sqrt(layer.in_features)
        a = (torch.rand((spec.rank, layer.in_features), generator=gen, dtype=torch.float32) * 2 - 1) * bound
        b = torch.zeros((layer.out_features, spec.rank), dtype=torch.float32)
        weights[path] = (nn.Parameter(a.to(device)), nn.Parameter(b.to(device)))
    if not weights:
        raise UserInputError(f"this model has no layers for the requested LoRA targets ({', '.join(sorted(names))})")
    return Adapter(spec=spec, scaling=LORA_ALPHA / spec.rank, weights=weights)


def copy_adapter(src: Adapter, *, frozen: bool) -> Adapter:
    """A weights-only copy (no gradients, no optimizer state)."""
    weights = {
        path: (
            nn.Parameter(a.detach().clone(), requires_grad=not frozen),
            nn.Parameter(b.detach().clone(), requires_grad=not frozen),
        )
        for path, (a, b) in src.weights.items()
    }
    return Adapter(spec=src.spec, scaling=src.scaling, weights=weights, frozen=frozen)
