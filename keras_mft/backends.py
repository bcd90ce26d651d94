"""Where keras-mft's code differs by backend.

Mask selection and the straight-through gradient are a few passes over every
masked weight at every step, so how fast a backend runs each pass decides
much of MFT's cost. `keras.ops` gives the same result everywhere but not the
same speed: XLA fuses elementwise passes and compiles a scatter into a fast
loop, while PyTorch and TensorFlow (which Keras runs without XLA on a CPU) run
op by op, each with its own counting kernel. The functions here choose, per
backend, the fastest way measured; every way gives the same result
(measurements: docs/benchmarks.md, "Why the code differs by backend").

- `histogram`: the backend's bincount kernel where `segment_sum` is slow, and
  on a GPU several copies of the bins, so that atomic additions spread out
  (TensorFlow, not measured on a GPU, always counts into one copy).
- `histogram_of_bin`: skips the entries of other bins where the counting
  kernel can, and picks out the bin's entries first where it cannot.
- `straight_through_gradient`: in place on PyTorch, whose fresh buffers the
  kernel zero-fills.
- `cond_skips_work`: whether a conditional saves the branch not taken.
"""

import keras
from keras import ops

# A power of two. On a GPU most scores fall in a few bins, whose atomic
# additions wait for each other; 256 copies measured about as fast as any
# other count (docs/benchmarks.md).
_GPU_HISTOGRAM_COPIES = 256


def histogram(bins, num_bins, copies=None):
    """int32 counts of the values of `bins` (1-D, non-negative int32) in
    [0, num_bins).

    JAX and TensorFlow do not count values of `num_bins` or more; PyTorch
    must not be given any.

    `copies` (a power of two) counts entry i into copy `i % copies` of the
    bins, then adds the copies up; by default 256 on a GPU, 1 elsewhere.
    """
    if copies is None:
        # On a CPU the copies cost more than they save (docs/benchmarks.md).
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
    # PyTorch's and TensorFlow's scatter (`segment_sum`) is many times slower
    # than their bincount kernels; only XLA makes it fast (docs/benchmarks.md).
    if backend == "torch":
        import torch

        return torch.bincount(bins, minlength=num_bins).to(torch.int32)
    if backend == "tensorflow":
        import tensorflow as tf

        # `tf.math.bincount` computes its size from the data, which XLA
        # refuses. `DenseBincount` ignores values of `size` or more.
        return tf.raw_ops.DenseBincount(input=bins, size=num_bins, weights=tf.zeros([0], tf.int32))
    import jax  # not `keras.ops`, to name the out-of-range rule: drop

    return jax.ops.segment_sum(ops.ones_like(bins), bins, num_bins, mode="drop")


def histogram_of_bin(keys, high, high_bin, low_bits):
    """int32 counts of the low `low_bits` bits of the `keys` whose high bits,
    `high` (`keys >> low_bits`), equal `high_bin`."""
    num_bins = 2**low_bits
    # One copy of the bins even on a GPU: one bin's entries are few enough
    # not to wait for each other (measurements: docs/benchmarks.md).
    if keras.backend.backend() == "torch":
        # `torch.bincount` counts every value, so the bin's entries are picked
        # out first, by the high bits already computed: one pass fewer than an
        # XOR and a comparison (docs/benchmarks.md).
        return _count(keys[high == high_bin] & (num_bins - 1), num_bins)
    # The bin's entries keep their low bits; every other entry becomes
    # `num_bins` or more, which `_count` skips here: faster than counting them
    # in an extra bin, where every addition waits for the one before.
    return _count(ops.bitwise_xor(keys, high_bin * num_bins), num_bins)


def straight_through_gradient(kernel, scores, upstream):
    """`sign(scores) * kernel * upstream`, computed in `kernel`'s dtype and
    returned in `scores`' dtype."""
    if keras.backend.backend() == "torch":
        import torch

        # The two products in place: eager PyTorch gets fresh memory, which
        # the kernel zero-fills, for every new result (docs/benchmarks.md).
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
    op, one pass over memory each, and a conditional runs one branch. XLA
    fuses the branch into the passes around it, and a conditional stops the
    fusion, which costs JAX more than the branch (measurements:
    docs/benchmarks.md).
    """
    return keras.backend.backend() != "jax"
