"""The mask of one matrix: remove the `floor(sparsity * n)` smallest |scores|.

Of equal scores, the one with the lower flat (row-major) index is removed
first, so the same scores give the same mask on every backend.
"""

import math
import numbers
from fractions import Fraction

from keras import ops

from keras_mft.masking.backends import cond
from keras_mft.masking.backends import cond_skips_work
from keras_mft.masking.backends import count_true
from keras_mft.masking.backends import histogram
from keras_mft.masking.backends import histogram_of_bin
from keras_mft.masking.backends import starts_from_last_threshold
from keras_mft.masking.backends import straight_through_gradient

# A non-negative float32 read as int32 sorts in the same order, so its 31 value
# bits are searched in two passes (radix select): the high 15, then the low 16.
_LOW_BITS = 16
_HIGH_BINS = 2 ** (31 - _LOW_BITS)
_LOW_BINS = 2**_LOW_BITS


def check_sparsity(sparsity, name="sparsity"):
    """Returns `sparsity` as a float, or raises if it is not in [0, 1)."""
    fraction = (
        f"the fraction of weights to remove (the paper uses 0.1). Received: {name}={sparsity!r}"
    )
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"`{name}` must be a number in [0, 1), {fraction}")
    if not 0.0 <= float(sparsity) < 1.0:  # NaN fails this test too
        raise ValueError(f"`{name}` must be in [0, 1) (1 would remove every weight): {fraction}")
    return float(sparsity)


def num_removed(size, sparsity):
    """`floor(sparsity * size)`, on the decimal the user wrote: 0.29 of 100 is 29, not 28."""
    return math.floor(Fraction(repr(float(sparsity))) * size)


def keep_mask(scores, count, last_threshold=-1):
    """A boolean tensor shaped like the float32 `scores`, True where an entry is
    kept, when `count` entries (an int or int32 tensor, `num_removed`) are
    removed. `last_threshold`, as for `select`, only makes the search faster."""
    return select(scores, count, last_threshold)[0]


def select(scores, count, last_threshold=-1):
    """Returns `(keep, threshold)`: `keep_mask`, and the int32 bit pattern of
    the `count`-th smallest |score|, which the next step passes as
    `last_threshold`."""
    columns = scores.shape[-1] if len(scores.shape) else 1
    keys = ops.view(ops.abs(ops.reshape(scores, (-1, columns))), "int32")
    threshold, ties_to_remove, ties = _kth_smallest(ops.reshape(keys, (-1,)), count, last_threshold)
    # Usually every entry equal to the threshold is removed and one comparison
    # gives the mask; only otherwise must the ties be ranked, in another pass.
    if cond_skips_work():
        keep = ops.cond(
            ops.equal(ties_to_remove, ties),
            lambda: ops.greater(keys, threshold),
            lambda: _remove_ties_in_order(keys, threshold, ties_to_remove),
        )
    else:
        keep = _remove_ties_in_order(keys, threshold, ties_to_remove)
    return ops.reshape(keep, ops.shape(scores)), threshold


def _remove_ties_in_order(keys, threshold, ties_to_remove):
    """Keeps the keys above `threshold`, and its ties but the first `ties_to_remove`."""
    # A cumulative sum over the whole kernel is a slow pass on XLA. Per-row
    # counts find the row where the removal stops: earlier rows remove all
    # their ties, later rows none, and only that row is ranked.
    ties_per_row = _count_per_row(ops.equal(keys, threshold))
    tied_before = ops.cumsum(ties_per_row)
    last_row = ops.sum(ops.cast(ops.less(tied_before, ties_to_remove), "int32"))
    ties_in_last_row = ties_to_remove - ops.take(ops.pad(tied_before, [[1, 0]]), last_row)
    last_row_keys = ops.take(keys, last_row, axis=0)
    last_row_tied = ops.equal(last_row_keys, threshold)
    tie_counts = ops.cast(last_row_tied, "int32")
    ties_before_column = ops.cumsum(tie_counts) - tie_counts
    last_row_keep = ops.logical_or(
        ops.greater(last_row_keys, threshold),
        ops.logical_and(last_row_tied, ops.greater_equal(ties_before_column, ties_in_last_row)),
    )
    # Rows before the last one keep what is above the threshold, rows after it
    # what is above threshold - 1.
    rows = ops.arange(ops.shape(keys)[0], dtype="int32")
    row_limit = ops.where(ops.less(rows, last_row), threshold, threshold - 1)
    keep = ops.greater(keys, ops.expand_dims(row_limit, 1))
    return ops.slice_update(keep, (last_row, 0), ops.expand_dims(last_row_keep, 0))


def _count_per_row(flags):
    """int32 count of the True entries of each row of a 2-D boolean tensor."""
    # Faster in float32 on every backend (docs/benchmarks.md, "Why the code
    # differs by backend"); exact up to 2**24 entries a row.
    dtype = "float32" if flags.shape[1] <= 2**24 else "int32"
    return ops.cast(ops.sum(ops.cast(flags, dtype), axis=1), "int32")


def _kth_smallest(keys, k, last_threshold):
    """The k-th smallest (1-based) of the non-negative int32 `keys`, by radix select.

    Returns `(value, needed, ties)`: the value, how many entries equal to it
    are among the k smallest (0 when k = 0), and how many equal it in all.
    """
    k = ops.convert_to_tensor(k, "int32")
    high = ops.right_shift(keys, _LOW_BITS)

    def full_search():
        return _search_high_bin(keys, high, *_select_bin(histogram(high, _HIGH_BINS), k)[:2])

    if not starts_from_last_threshold(keys):
        return full_search()
    # Scores move little in a step, so the k-th key usually lies in the same
    # high bin as last step's. Two counts tell whether it does, and then the
    # 32,768-bin histogram is skipped. -1 (no last threshold) always misses.
    last_bin = ops.right_shift(ops.convert_to_tensor(last_threshold, "int32"), _LOW_BITS)
    below = count_true(ops.less(high, last_bin))
    inside = count_true(ops.equal(high, last_bin))
    return cond(
        ops.logical_and(ops.less(below, k), ops.less_equal(k, below + inside)),
        lambda: _search_high_bin(keys, high, last_bin, k - below),
        full_search,
    )


def _search_high_bin(keys, high, high_bin, k):
    """`_kth_smallest`, given the high bin of the k-th key and k's rank in it."""
    low_counts = histogram_of_bin(keys, high, high_bin, _LOW_BITS)
    low_bin, needed, ties = _select_bin(low_counts, k)
    return high_bin * _LOW_BINS + low_bin, needed, ties


def _select_bin(counts, k):
    """The bin of the k-th smallest entry, k's rank in it, and its count."""
    cumulative = ops.cumsum(counts)
    chosen = ops.sum(ops.cast(ops.less(cumulative, k), "int32"))
    before = ops.take(ops.pad(cumulative, [[1, 0]]), chosen)
    return chosen, k - before, ops.take(counts, chosen)


def zero_removed(kernel, keep):
    """`kernel` with 0 where the boolean `keep` is False, whatever it held there."""
    return ops.where(keep, kernel, ops.zeros((), kernel.dtype))


def masked_kernel(kernel, scores, keep):
    """The kernel with its removed entries zeroed, with the straight-through
    gradient to `scores`, for kept and removed entries alike:

        d loss / d scores = sign(scores) * kernel * d loss / d (kernel * mask)

    The frozen kernel gets no gradient.

    Args:
        kernel: the frozen kernel, in the layer's compute dtype.
        scores: float32 tensor shaped like `kernel`.
        keep: the boolean mask, True where an entry is kept (see `keep_mask`).
    """
    # TensorFlow's custom gradients refuse a variable read inside them.
    kernel = ops.stop_gradient(ops.convert_to_tensor(kernel))

    # `keep` and `kernel` are arguments, not closure variables, so that
    # PyTorch frees them after the backward pass, and JAX can recompute this
    # under `jax.checkpoint` (gradient checkpointing). Boolean `keep`: a
    # quarter of a float mask's memory.
    @ops.custom_gradient
    def masked(scores, keep, kernel):
        def gradient(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally
                (upstream,) = args
            return straight_through_gradient(kernel, scores, upstream), None, None

        return zero_removed(kernel, keep), gradient

    # A tensor, not a variable: PyTorch's autograd follows only tensor inputs.
    return masked(ops.convert_to_tensor(scores), keep, kernel)
