"""Input validation shared by the ops modules.

Every check raises :class:`OpsInputError` (a ``ValueError``) that names the argument, the shape or value it got,
what was expected and how to fix it. Checks look only at shapes and dtypes, so none of them synchronises with an
accelerator; the few value checks that do (empty rows, negative turn ids) say so where they happen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentgym.errors import AgentGymError


class OpsInputError(AgentGymError, ValueError):
    """A tensor handed to an ``agentgym.ops`` function has the wrong shape, dtype or value."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to do the arithmetic in: ``dtype`` itself, or float32 for 16-bit and integer inputs.

    Ratios, exponentials and variances lose most of their digits in bf16/fp16, so the math runs in at least
    float32 and the result is cast back to the caller's dtype.

    Args:
        dtype: The dtype of the caller's main input.

    Returns:
        float32 or float64.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype results are returned in: the input's floating dtype, or the default dtype for integer/bool input."""
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def check_ndim(name: str, x: Tensor, ndim: int, layout: str) -> None:
    """Raise if ``x`` is not a tensor with ``ndim`` dimensions.

    Args:
        name: Argument name, for the message.
        x: The tensor to check.
        ndim: Expected number of dimensions.
        layout: Human-readable expected layout, for example ``"[B, T]"``.
    """
    if not isinstance(x, Tensor):
        raise OpsInputError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}.")
    if x.dim() != ndim:
        raise OpsInputError(
            f"{name} must have shape {layout} ({ndim} dims), got shape {tuple(x.shape)}. "
            f"Reshape it, e.g. one row per sequence and one column per position."
        )


def check_same_shape(ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Raise if any of ``others`` (``None`` entries are skipped) differs in shape from ``ref``.

    Args:
        ref_name: Name of the reference argument, for the message.
        ref: The tensor whose shape the others must match.
        **others: Named tensors to compare.
    """
    for name, x in others.items():
        if x is None:
            continue
        if not isinstance(x, Tensor):
            raise OpsInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.shape != ref.shape:
            raise OpsInputError(
                f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
                f"they must match position for position."
            )


def check_group_ids(rewards: Tensor, group_ids: Tensor) -> None:
    """Validate the ``(rewards [N], group_ids [N])`` pair of the trajectory-level estimators."""
    check_ndim("rewards", rewards, 1, "[N]")
    check_ndim("group_ids", group_ids, 1, "[N]")
    if group_ids.shape != rewards.shape:
        raise OpsInputError(
            f"group_ids has shape {tuple(group_ids.shape)} but rewards has shape {tuple(rewards.shape)}; "
            f"give one group id per rollout."
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise OpsInputError(
            f"group_ids must be an integer tensor (torch.long), got {group_ids.dtype}; "
            f"map task/seed keys to integers first."
        )


def as_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A float copy of a bool/int/float 0-1 mask, so it can multiply values of ``dtype``."""
    return mask.to(dtype)
