"""``forward_backward_custom``: an arbitrary differentiable loss on the per-token logprobs.

The server only knows its built-in losses, so a custom loss costs two passes
(spec §4.1): a ``forward`` returns the target logprobs; the user's loss is
differentiated locally with torch; a ``cross_entropy`` ``forward_backward``
with ``weights = -d loss / d logprobs`` then gives the model the same
gradient, because the cross-entropy loss is ``-sum(weights * logprobs)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .types import Datum, ForwardBackwardOutput, TensorData

if TYPE_CHECKING:
    import torch

__all__ = ["CustomLossFnV1", "backward_data", "with_user_metrics"]

CustomLossFnV1 = Callable[[list[Datum], list["torch.Tensor"]], tuple["torch.Tensor", dict[str, float]]]


def backward_data(
    data: Sequence[Datum], forward_output: ForwardBackwardOutput, loss_fn: CustomLossFnV1
) -> tuple[list[Datum], dict[str, float]]:
    """Run the user's loss on the forward logprobs; return the backward datums and its metrics."""
    import torch

    logprobs = [
        torch.tensor(output["logprobs"].data, dtype=torch.float32, requires_grad=True)
        for output in forward_output.loss_fn_outputs
    ]
    loss, metrics = loss_fn(list(data), logprobs)
    loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
    new_data: list[Datum] = []
    # strict=False keeps zip's truncation (the server answers one output per datum; a short answer is not checked here).
    for datum, lp in zip(data, logprobs, strict=False):
        if lp.grad is None:
            raise ValueError("the custom loss did not produce a gradient for every datum's logprobs")
        inputs: dict[str, Any] = {
            "target_tokens": datum.loss_fn_inputs["target_tokens"],
            "weights": TensorData.from_torch(-lp.grad),
        }
        new_data.append(Datum(model_input=datum.model_input, loss_fn_inputs=inputs))
    return new_data, metrics


def with_user_metrics(output: ForwardBackwardOutput, metrics: dict[str, float]) -> ForwardBackwardOutput:
    return output.model_copy(update={"metrics": {**output.metrics, **metrics}})
