"""The engine: one frozen base model, many named LoRA adapters, training and sampling.

Called by one worker thread at a time (the server serialises), and guarded by a
lock anyway. Adapters are addressed by public string ids; nothing internal
(slots, parameter objects) leaves this class.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import checkpoint, lora, sampling, train
from .errors import COMPUTE_ERRORS, AdapterNotFound, EngineError, ModelLoadError, UserInputError
from .messages import AdamConfig, LoraSpec, ModelInfo, SampleJob, SampleOutput, TrainDatum, TrainOutput
from .models import LoadedBase, ModelParts, load_base_model
from .optim import adamw_step
from .packed import pack_weights

__all__ = ["Engine", "load_engine"]


FbItem = tuple[str, list[TrainDatum], str, "Mapping[str, float | str] | None", bool]


def load_engine(
    model_name: str,
    *,
    home: pathlib.Path,
    device: str = "cpu",
    dtype: str = "float32",
    max_tokens_per_microbatch: int = 2048,
    activation_checkpointing: bool | None = None,
    packed_weights: bool = True,
) -> Engine:
    """Resolve and load ``model_name`` (see :mod:`.models`) and wrap it for LoRA.

    ``max_tokens_per_microbatch`` bounds the padded tokens that go through the model
    at once in training. ``activation_checkpointing`` recomputes decoder layers in
    backward (far less memory per token, about a third more compute): ``True``
    always, ``False`` never, ``None`` (default) for micro-batches of more than
    :data:`~.train.AUTO_CHECKPOINT_TOKENS` tokens. ``packed_weights`` keeps a
    oneDNN-packed copy of the base linear weights for sampling and forward-only
    passes on CPU (faster, twice the memory for those weights; see :mod:`.packed`).
    """
    if not isinstance(max_tokens_per_microbatch, int) or max_tokens_per_microbatch < 1:
        raise ModelLoadError(f"max_tokens_per_microbatch must be a positive integer, got {max_tokens_per_microbatch!r}")
    base = load_base_model(model_name, home=pathlib.Path(home), device=device, dtype=dtype)
    return Engine(
        base,
        max_tokens_per_microbatch=max_tokens_per_microbatch,
        activation_checkpointing=activation_checkpointing,
        packed_weights=packed_weights,
    )


class Engine:
    """A loaded base model with named adapters. See the package docstring for the API."""

    def __init__(
        self,
        base: LoadedBase,
        *,
        max_tokens_per_microbatch: int = 2048,
        activation_checkpointing: bool | None = None,
        packed_weights: bool = True,
    ) -> None:
        from transformers import AutoTokenizer

        self.info: ModelInfo = base.info
        self.load_seconds = base.load_seconds
        self.source = base.source
        self.max_tokens_per_microbatch = max_tokens_per_microbatch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(base.info.tokenizer_dir))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load the tokenizer of {base.info.name} from {base.info.tokenizer_dir}: {exc}"
            ) from exc
        model = base.model
        self._router = lora.Router()
        self._layers = lora.attach_lora(model, self._router)
        if not self._layers:
            raise ModelLoadError(f"{base.info.name}: no linear layers LoRA can target (arch {base.info.arch})")
        # How many base linear layers got a packed copy (0 off CPU, when switched off, or
        # when memory is short).
        self.packed_layers = self._pack_base_weights() if packed_weights else 0
        decoder = model.get_decoder()
        lm_head = getattr(model, "lm_head", None)
        if not isinstance(lm_head, nn.Module):
            raise ModelLoadError(f"{base.info.name}: model has no lm_head")
        self._device = next(model.parameters()).device
        self._parts = ModelParts(
            model=model,
            decoder=decoder,
            lm_head=lm_head,
            router=self._router,
            device=self._device,
            vocab_size=base.info.vocab_size,
            max_context=base.info.max_context,
        )
        self._checkpointing = train.LayerCheckpointing(decoder) if activation_checkpointing is not False else None
        self._checkpoint_above = {True: 0, False: None, None: train.AUTO_CHECKPOINT_TOKENS}[activation_checkpointing]
        self._adapters: dict[str, lora.Adapter] = {}
        # Copies of adapters' gradients kept while a request runs in parts (gradient_checkpoint).
        self._grad_checkpoints: dict[str, tuple[lora.Adapter, list[torch.Tensor | None]]] = {}
        self._lock = threading.RLock()

    def _pack_base_weights(self) -> int:
        layers = list(self._layers.values())
        for layer, packed in zip(layers, pack_weights([layer.base.weight for layer in layers]), strict=True):
            layer.packed = packed
        return sum(layer.packed is not None for layer in layers)

    # ------------------------------------------------------------------ adapters

    def _get(self, adapter_id: str) -> lora.Adapter:
        try:
            return self._adapters[adapter_id]
        except (KeyError, TypeError):
            raise AdapterNotFound(adapter_id) from None

    def create_adapter(self, adapter_id: str, spec: LoraSpec) -> None:
        """Create a fresh adapter (``A`` seeded by ``spec.seed``, ``B = 0``)."""
        with self._lock:
            self._check_new_id(adapter_id)
            self._adapters[adapter_id] = lora.new_adapter(self._layers, spec, self._device)

    def _check_new_id(self, adapter_id: str) -> None:
        if not isinstance(adapter_id, str) or not adapter_id:
            raise UserInputError(f"adapter id must be a non-empty string, got {adapter_id!r}")
        if adapter_id in self._adapters:
            raise UserInputError(f"adapter {adapter_id!r} already exists")

    def copy_adapter(self, src_id: str, dst_id: str) -> None:
        """Snapshot ``src_id``'s weights as a frozen adapter ``dst_id`` (replacing any)."""
        with self._lock:
            src = self._get(src_id)
            if not isinstance(dst_id, str) or not dst_id:
                raise UserInputError(f"adapter id must be a non-empty string, got {dst_id!r}")
            if dst_id == src_id:
                raise UserInputError(f"cannot copy adapter {src_id!r} onto itself")
            self._adapters[dst_id] = lora.copy_adapter(src, frozen=True)

    def drop_adapter(self, adapter_id: str) -> None:
        with self._lock:
            self._get(adapter_id)
            del self._adapters[adapter_id]
            self._grad_checkpoints.pop(adapter_id, None)

    def has_adapter(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id in self._adapters

    def adapter_spec(self, adapter_id: str) -> LoraSpec:
        with self._lock:
            return self._get(adapter_id).spec

    def adapter_ids(self) -> list[str]:
        with self._lock:
            return list(self._adapters)

    def adapter_nbytes(self, adapter_id: str) -> int:
        """Memory held by an adapter's weights (not its optimizer state)."""
        with self._lock:
            return sum(p.numel() * p.element_size() for p in self._get(adapter_id).parameters())

    # ------------------------------------------------------------------ training

    def forward_backward(
        self,
        adapter_id: str,
        data: list[TrainDatum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        *,
        backward: bool,
    ) -> TrainOutput:
        """forward (``backward=False``) or forward_backward for one adapter; raises on error."""
        result = self.forward_backward_many([(adapter_id, data, loss_fn, loss_fn_config, backward)])[0]
        if isinstance(result, EngineError):
            raise result
        return result

    def forward_backward_many(self, items: Sequence[FbItem]) -> list[TrainOutput | EngineError]:
        """Several requests (possibly different adapters) through the base model together.

        Each item is ``(adapter_id, data, loss_fn, loss_fn_config, backward)`` and gets
        its own result; an invalid item yields its error without failing the others.
        """
        with self._lock:
            results: list[TrainOutput | EngineError | None] = [None] * len(items)
            prepared: list[tuple[int, train.PreparedRequest]] = []
            for i, (adapter_id, data, loss_fn, config, backward) in enumerate(items):
                try:
                    adapter = self._get(adapter_id)
                    if backward and adapter.frozen:
                        raise UserInputError(
                            f"adapter {adapter_id!r} is a frozen sampler snapshot and cannot be trained"
                        )
                    prepared.append(
                        (
                            i,
                            train.prepare_request(
                                adapter,
                                data,
                                loss_fn,
                                config,
                                backward,
                                vocab_size=self.info.vocab_size,
                                max_context=self.info.max_context,
                            ),
                        )
                    )
                except EngineError as exc:
                    results[i] = exc
            for i, outcome in self._train(prepared):
                results[i] = outcome
            return results  # type: ignore[return-value]

    def _train(self, prepared: list[tuple[int, train.PreparedRequest]]) -> list[tuple[int, TrainOutput | EngineError]]:
        if not prepared:
            return []
        requests = [req for _, req in prepared]
        # New gradients go to fresh buffers and are added to the accumulated ones only
        # on success, so a failed batch never leaves partial gradients behind.
        params = {id(p): p for req in requests if req.backward for p in req.adapter.parameters()}.values()
        stash = {id(p): p.grad for p in params}
        for p in params:
            p.grad = None
        try:
            outputs = train.run_requests(
                self._parts,
                requests,
                self.max_tokens_per_microbatch,
                checkpointing=self._checkpointing,
                checkpoint_above=self._checkpoint_above,
            )
        except BaseException as exc:
            for p in params:
                p.grad = stash[id(p)]
            if not isinstance(exc, (EngineError, *COMPUTE_ERRORS)):
                raise
            if len(prepared) == 1:
                error = exc if isinstance(exc, EngineError) else EngineError(f"forward_backward failed: {exc}")
                return [(prepared[0][0], error)]
            out: list[tuple[int, TrainOutput | EngineError]] = []
            for i, req in prepared:  # retry alone, so one bad item does not fail the others
                req.loss_sum, req.logprobs = 0.0, [None] * len(req.rows)
                out.extend(self._train([(i, req)]))
            return out
        for p in params:
            old = stash[id(p)]
            if old is not None:
                p.grad = old if p.grad is None else old.add_(p.grad)
        return [(i, o) for (i, _), o in zip(prepared, outputs, strict=True)]

    def gradient_checkpoint(self, adapter_id: str, action: str) -> None:
        """Make a request run as several forward_backward calls all or nothing.

        ``open``: keep a copy of the adapter's accumulated gradients (replacing a kept one);
        ``restore``: put the kept copy back and forget it (no-op when none is kept, or the
        adapter was replaced since); ``close``: forget the kept copy.
        """
        with self._lock:
            if action == "open":
                adapter = self._get(adapter_id)
                grads = [None if p.grad is None else p.grad.detach().clone() for p in adapter.parameters()]
                self._grad_checkpoints[adapter_id] = (adapter, grads)
            elif action == "restore":
                kept = self._grad_checkpoints.pop(adapter_id, None)
                if kept is not None and self._adapters.get(adapter_id) is kept[0]:
                    for p, grad in zip(kept[0].parameters(), kept[1], strict=True):
                        p.grad = grad
            elif action == "close":
                self._grad_checkpoints.pop(adapter_id, None)
            else:
                raise UserInputError(f"unknown gradient checkpoint action {action!r}")

    def optim_step(self, adapter_id: str, params: AdamConfig) -> dict[str, float]:
        """Apply AdamW from the accumulated gradients, then clear them."""
        with self._lock:
            adapter = self._get(adapter_id)
            if adapter.frozen:
                raise UserInputError(f"adapter {adapter_id!r} is a frozen sampler snapshot and cannot be trained")
            return adamw_step(adapter, params)

    # ------------------------------------------------------------------ checkpoints

    def save_adapter(self, adapter_id: str, directory: pathlib.Path, *, optimizer: bool) -> int:
        """Write a PEFT-format checkpoint (plus optimizer state if asked); returns bytes written."""
        with self._lock:
            adapter = self._get(adapter_id)
            return checkpoint.write_checkpoint(
                adapter, pathlib.Path(directory), base_model=self.info.name, optimizer=optimizer
            )

    def load_adapter(self, adapter_id: str, directory: pathlib.Path, *, optimizer: bool) -> LoraSpec:
        """Load a checkpoint into ``adapter_id`` (created if missing).

        Weights are replaced; accumulated gradients are cleared; the optimizer
        state is restored with ``optimizer=True`` (error if the checkpoint has
        none) and reset otherwise.
        """
        with self._lock:
            if not isinstance(adapter_id, str) or not adapter_id:
                raise UserInputError(f"adapter id must be a non-empty string, got {adapter_id!r}")
            ckpt = checkpoint.read_checkpoint(pathlib.Path(directory), self._layers, optimizer=optimizer)
            weights = {
                path: (nn.Parameter(a.to(self._device)), nn.Parameter(b.to(self._device)))
                for path, (a, b) in ckpt.weights.items()
            }
            adapter = lora.Adapter(spec=ckpt.spec, scaling=ckpt.scaling, weights=weights)
            if optimizer and ckpt.optim_state is not None:
                adapter.optim_step = ckpt.optim_step or 0
                adapter.optim_state = {
                    k: (m.to(self._device), v.to(self._device)) for k, (m, v) in ckpt.optim_state.items()
                }
            self._adapters[adapter_id] = adapter
            self._grad_checkpoints.pop(adapter_id, None)
            return ckpt.spec

    # ------------------------------------------------------------------ sampling

    def sample(self, jobs: list[SampleJob]) -> list[SampleOutput | EngineError]:
        """Sample all jobs (any mix of adapters; ``adapter_id=None`` = base model) in one batch."""
        with self._lock:
            results: list[SampleOutput | EngineError | None] = [None] * len(jobs)
            prepared: list[tuple[int, sampling.PreparedJob]] = []
            for i, job in enumerate(jobs):
                try:
                    adapter = None if job.adapter_id is None else self._get(job.adapter_id)
                    prepared.append(
                        (
                            i,
                            sampling.prepare_job(
                                job, adapter, vocab_size=self.info.vocab_size, max_context=self.info.max_context
                            ),
                        )
                    )
                except EngineError as exc:
                    results[i] = exc
            for i, outcome in self._sample(prepared):
                results[i] = outcome
            return results  # type: ignore[return-value]

    def _sample(self, prepared: list[tuple[int, sampling.PreparedJob]]) -> list[tuple[int, SampleOutput | EngineError]]:
        if not prepared:
            return []
        try:
            outputs = sampling.run_jobs(self._parts, self.tokenizer, [job for _, job in prepared])
        except (EngineError, *COMPUTE_ERRORS) as exc:
            if len(prepared) == 1:
                error = exc if isinstance(exc, EngineError) else EngineError(f"sampling failed: {exc}")
                return [(prepared[0][0], error)]
            out: list[tuple[int, SampleOutput | EngineError]] = []
            for item in prepared:
                out.extend(self._sample([item]))
            return out
        return [(i, o) for (i, _), o in zip(prepared, outputs, strict=True)]

    def __repr__(self) -> str:
        return f"Engine({self.info.name!r}, device={str(self._device)!r}, adapters={len(self._adapters)})"
