"""Where keras-mft's code differs by backend, each place measured.

`histogram`: how many entries fall in each bin, for mask selection.
`keras.ops.segment_sum` counts them on every backend, inside `jit` too, but
only XLA turns it into a fast loop. For the 45 million keys of a 4096x11008
matrix on a 2-core CPU, PyTorch's scatter took 1.8 s against 0.05 s for
`torch.bincount`, and TensorFlow's (which Keras runs without XLA on a machine
without an accelerator) 0.16 s against 0.03 s for its `DenseBincount`
kernel. So PyTorch and TensorFlow use their bincount.

On a GPU the entries are counted with atomic additions, and additions to
one bin wait for each other. 99% of the scores fall in about 1,000 of the
first histogram's 32768 bins, so for a 4096x11008 matrix it took 9.1 ms on an
H200 with JAX and 5.6 ms with PyTorch, longer than a full sort of the same
keys (1.4 and 2.1 ms). There `histogram` counts into 256 copies of the bins,
entry i into copy i % 256, and adds them up: 1.3 ms with JAX and 1.8 ms with
PyTorch. On a CPU the copies were slower (0.14 s against 0.12 s with JAX,
0.36 s against 0.16 s with PyTorch). TensorFlow was not measured on a GPU,
and counts into one copy everywhere.

`histogram_of_bin`: the second histogram of a selection, which counts the
low bits of the entries of one bin of the first. JAX and TensorFlow count
the keys XORed with that bin's high bits: the bin's entries keep their low
bits and every other entry, most of them, gets a value out of range, which
JAX's scatter (`mode="drop"`) and TensorFlow's `DenseBincount` skip.
Counting those in an extra bin instead made each of them add to the same
counter in turn, and that histogram took 0.21 s instead of 0.12 s on JAX and
0.12 s instead of 0.08 s on TensorFlow. `torch.bincount` counts every value
it is given, so PyTorch picks out the bin's entries first, by comparing the
high bits it already has: 94 ms for a 4096x11008 matrix, against 152 ms for
the XOR and a comparison to drop the rest.

`straight_through_gradient`: the scores' gradient. Eager PyTorch gets fresh
memory for every weight-sized result, which the kernel zero-fills page by
page; that gradient reuses one buffer for its two products.

`cond_skips_work`: whether `keras.ops.cond` saves the branch not taken.
"""

import keras
from keras import ops


_GPU_HISTOGRAM_COPIES = 256  # a power of two


def histogram(bins, num_bins, copies=None):
    """int32 counts of the values of `bins` (1-D, non-negative int32) in
    [0, num_bins).

    JAX and TensorFlow do not count values of `num_bins` or more; PyTorch
    must not be given any.

    `copies` (a power of two) counts entry i into copy `i % copies` of the
    bins, then adds the copies up; by default 256 on a GPU, 1 elsewhere.
    """
    if copies is None:
        copies = _GPU_HISTOGRAM_COPIES if _on_gpu(bins) else 1
    if copies == 1:
        return _count(bins, num_bins)
    copy = ops.bitwise_and(ops.arange(ops.shape(bins)[0], dtype="int32"), copies - 1)
    # Values out of range stay out of range in every copy.
    spread = ops.where(ops.less(bins, num_bins), bins + copy * num_bins, num_bins * copies)
    counts = ops.reshape(_count(spread, num_bins * copies), (copies, num_bins))
    return ops.cast(ops.sum(counts, axis=0), "int32")


def _on_gpu(tensor):
    """Whether `tensor` is computed on a GPU (PyTorch and JAX only)."""
    backend = keras.backend.backend()
    if backend == "torch":
        return tensor.is_cuda
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    return False


def _count(bins, num_bins):
    """`histogram` in one copy of the bins. JAX and TensorFlow skip values of
    `num_bins` or more, which `histogram_of_bin` relies on."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.bincount(bins, minlength=num_bins).to(torch.int32)
    if backend == "tensorflow":
        import tensorflow as tf

        # `tf.math.bincount` computes its size from the data, which XLA
        # refuses. `DenseBincount` ignores values of `size` or more.
        return tf.raw_ops.DenseBincount(
            input=bins, size=num_bins, weights=tf.zeros([0], tf.int32)
        )
    import jax  # not `keras.ops`, to name the out-of-range rule: drop

    return jax.ops.segment_sum(ops.ones_like(bins), bins, num_bins, mode="drop")


def histogram_of_bin(keys, high, high_bin, low_bits):
    """int32 counts of the low `low_bits` bits of the `keys` whose high bits,
    `high` (`keys >> low_bits`), equal `high_bin`."""
    num_bins = 2**low_bits
    # One copy of the bins even on a GPU: one bin's entries are few enough
    # not to wait for each other (0.4 ms with JAX and 0.6 ms with PyTorch on
    # an H200, for a 4096x11008 matrix).
    if keras.backend.backend() == "torch":
        return _count(keys[high == high_bin] & (num_bins - 1), num_bins)
    # The bin's entries keep their low bits; every other entry becomes
    # `num_bins` or more, which `_count` does not count here.
    return _count(ops.bitwise_xor(keys, high_bin * num_bins), num_bins)


def straight_through_gradient(kernel, scores, upstream):
    """`sign(scores) * kernel * upstream`, computed in `kernel`'s dtype and
    returned in `scores`' dtype."""
    if keras.backend.backend() == "torch":
        import torch

        # The two products in place: one 4096x11008 gradient took 65 ms
        # instead of 139 ms with a fresh result for each.
        gradient = torch.sign(scores).to(kernel.dtype)
        gradient.mul_(kernel).mul_(upstream)
        return gradient.to(scores.dtype)
    # In this order only one weight-sized temporary (`kernel * sign`) is alive
    # beside the result.
    kernel_sign = ops.multiply(kernel, ops.cast(ops.sign(scores), kernel.dtype))
    return ops.cast(ops.multiply(upstream, kernel_sign), scores.dtype)


def cond_skips_work():
    """Whether a pass that `keras.ops.cond` leaves out saves its time.

    PyTorch and TensorFlow (as Keras runs it on a CPU, without XLA) run op by
    op, one pass over memory each, and a conditional runs one branch: leaving
    out the ranking of tied scores made a 4096x11008 MFT step 14% faster on
    PyTorch and 9% on TensorFlow. XLA fuses that ranking into the passes
    around it, and a conditional stops the fusion: on JAX the same step was
    4% slower with it.
    """
    return keras.backend.backend() != "jax"
