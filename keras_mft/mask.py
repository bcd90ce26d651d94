"""The mask of one matrix: keep the largest |score| entries, remove the rest.

MFT removes exactly `floor(sparsity * n)` of the `n` entries of every masked
matrix: the ones with the smallest absolute score. Equal scores are broken by
position, the entry with the lower flat (row-major) index being removed first,
so the same scores give the same mask on every backend.
"""

import math
import numbers
from fractions import Fraction

from keras import ops

# |score| as float32 is non-negative, so its bit pattern read as int32 sorts in
# the same order as its value. Searching over the 31 value bits finds the k-th
# smallest entry exactly, with one comparison pass per bit and no sort.
_VALUE_BITS = 31


def check_sparsity(sparsity, name="sparsity"):
    """Returns `sparsity` as a float, or raises if it is not in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number in [0, 1), the fraction of weights to "
            f"remove (the paper uses 0.1). Received: {name}={sparsity!r}"
        )
    if not 0.0 <= float(sparsity) < 1.0:  # NaN fails this test too
        raise ValueError(
            f"`{name}` must be in [0, 1): it is the fraction of weights to "
            f"remove, and 1 would remove them all (the paper uses 0.1). "
            f"Received: {name}={sparsity!r}"
        )
    return float(sparsity)


def num_removed(size, sparsity):
    """How many of `size` entries a mask of ratio `sparsity` removes.

    `floor(sparsity * size)`, computed on the decimal the user wrote, so that
    `sparsity=0.29` removes 29 of 100 entries (plain float arithmetic gives 28).
    """
    return math.floor(Fraction(repr(float(sparsity))) * size)


def keep_mask(scores, removed):
    """Returns 1.0 where an entry is kept and 0.0 where it is removed.

    Args:
        scores: float32 tensor of any shape.
        removed: int or int32 tensor, how many entries to remove (see
            `num_removed`).
    """
    keys = ops.view(ops.reshape(ops.abs(scores), (-1,)), "int32")
    threshold = _kth_smallest(keys, removed)
    below = ops.less(keys, threshold)
    tied = ops.equal(keys, threshold)
    ties_to_remove = removed - ops.sum(ops.cast(below, "int32"))
    tie_rank = ops.cumsum(ops.cast(tied, "int32"))
    is_removed = ops.logical_or(
        below, ops.logical_and(tied, ops.less_equal(tie_rank, ties_to_remove))
    )
    keep = ops.cast(ops.logical_not(is_removed), scores.dtype)
    return ops.reshape(keep, ops.shape(scores))


def _kth_smallest(keys, k):
    """The k-th smallest (1-based) of non-negative int32 `keys`, by bisection."""
    # A loop op rather than a Python loop keeps the compiled graph small, and
    # a module-level body lets JAX reuse the compiled loop between calls.
    bounds = (
        ops.convert_to_tensor(0, "int32"),
        ops.convert_to_tensor(2**_VALUE_BITS - 1, "int32"),
        keys,
        ops.convert_to_tensor(k, "int32"),
    )
    low, _, _, _ = ops.fori_loop(0, _VALUE_BITS, _halve, bounds)
    return low


def _halve(step, state):
    low, high, keys, k = state
    middle = low + (high - low) // 2
    enough = ops.sum(ops.cast(ops.less_equal(keys, middle), "int32")) >= k
    return (
        ops.where(enough, low, middle + 1),
        ops.where(enough, middle, high),
        keys,
        k,
    )


def straight_through_mask(scores, removed):
    """The hard mask in the forward pass, with gradient `sign(scores)`.

    Forward: `keep_mask(scores, removed)`, exactly 0 or 1. Backward: the
    gradient reaching the mask is passed to `|scores|` unchanged, so
    `d loss / d scores = sign(scores) * d loss / d mask` for kept and removed
    entries alike (the straight-through estimator of the MFT paper).
    """
    hard = keep_mask(ops.stop_gradient(scores), removed)
    # `scores - stop_gradient(scores)` is exactly zero, so the forward value is
    # `hard` bit for bit, while its derivative with respect to scores is 1.
    zero_with_gradient = scores - ops.stop_gradient(scores)
    return hard + zero_with_gradient * ops.stop_gradient(ops.sign(scores))
