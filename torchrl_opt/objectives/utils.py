"""Helpers shared by the OPT loss modules."""

from __future__ import annotations

from tensordict import TensorDict, TensorDictBase, is_tensor_collection

__all__ = ["plain_params"]


def plain_params(params: TensorDictBase) -> TensorDict:
    """A plain ``TensorDict`` view of ``params`` (same batch sizes, same leaf ``Parameter`` objects).

    ``TensorDictParams`` is not a pytree node for ``torch.func``; this view is, and gradients taken
    through it reach the original parameters.
    """
    return TensorDict(
        {
            key: plain_params(value) if is_tensor_collection(value) else value
            for key, value in params.items()
        },
        batch_size=params.batch_size,
    )
