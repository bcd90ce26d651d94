"""Where keras-mft's code differs by backend.

Mask selection and the straight-through gradient are passes over every masked
weight at every step. `keras.ops` gives the same result on every backend but
not the same speed: XLA fuses passes and compiles a scatter into a fast loop,
while PyTorch and TensorFlow (without XLA on a CPU) run op by op. Each function
here takes, per backend, the fastest way measured; all give the same result.
Every measurement cited below is in docs/benchmarks.md, "Why the code differs
by backend".
"""

import keras
from keras import ops

# A power of two. On a GPU most scores fall in a few bins, whose atomic
# additions wait for each other; 256 copies measured as fast as any count.
_GPU_HISTOGRAM_COPIES = 256


def histogram(bins, num_bins, copies=None):
    """int32 counts of the values of `bins` (1-D, non-negative int32) in [0, num_bins).

    `copies` (a power of two, by default 256 on a GPU and 1 elsewhere)
    counts entry i into copy `i % copies` of the bins, then adds them up.
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
    """`histogram` in one copy. JAX and TensorFlow skip values of `num_bins` or more."""
    backend = keras.backend.backend()
    # `segment_sum` is many times slower than a bincount kernel, except on XLA.
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
    """int32 counts of the low `low_bits` bits of the `keys` whose `high` bits equal `high_bin`."""
    num_bins = 2**low_bits
    # One copy of the bins even on a GPU: one bin's entries rarely collide.
    if keras.backend.backend() == "torch":
        # `torch.bincount` counts every value: pick out the bin's entries.
        return _count(keys[high == high_bin] & (num_bins - 1), num_bins)
    # Every other bin's entries become `num_bins` or more, which `_count`
    # skips: faster than counting them in an extra bin.
    return _count(ops.bitwise_xor(keys, high_bin * num_bins), num_bins)


def straight_through_gradient(kernel, scores, upstream):
    """`sign(scores) * kernel * upstream`, computed in `kernel`'s dtype, in `scores`' dtype."""
    if keras.backend.backend() == "torch":
        import torch

        # In place: eager PyTorch's fresh buffers are zero-filled by the kernel.
        gradient = torch.sign(scores).to(kernel.dtype)
        gradient.mul_(kernel).mul_(upstream)
        return gradient.to(scores.dtype)
    # In this order only one weight-sized temporary is alive beside the result.
    kernel_sign = ops.multiply(kernel, ops.cast(ops.sign(scores), kernel.dtype))
    return ops.cast(ops.multiply(upstream, kernel_sign), scores.dtype)


def count_true(flags):
    """int32 count of the True entries of a boolean tensor."""
    if keras.backend.backend() == "torch":
        import torch

        # Summing the flags cast to integers took five times as long.
        return torch.count_nonzero(flags).to(torch.int32)
    return ops.sum(ops.cast(flags, "int32"))


def starts_from_last_threshold(keys):
    """Whether a selection first looks in last step's high bin (`keras_mft.mask`)."""
    # On a GPU the 32,768-bin histogram is most of a selection, and two counts
    # skip it. On a CPU that histogram costs about what the counts do, and
    # the conditional around it made every backend slower.
    return _on_gpu(keys)


def cond(predicate, true_fn, false_fn):
    """`keras.ops.cond`. On JAX outside `jax.jit`, a plain `if`: `jax.lax.cond`
    would trace and compile both branches at every call (0.5 s)."""
    if keras.backend.backend() == "jax":
        import jax

        if not isinstance(predicate, jax.core.Tracer):
            return true_fn() if predicate else false_fn()
    return ops.cond(predicate, true_fn, false_fn)


def remember(variable, value):
    """`variable.assign(value)`, except where JAX would keep a tracer in it."""
    if keras.backend.backend() == "jax":
        import jax
        from keras.src.backend.common.stateless_scope import in_stateless_scope

        # Keras' steps record the assignment (a stateless scope); a bare
        # `jax.jit` or `jax.grad` of a layer would leak the tracer instead.
        if isinstance(value, jax.core.Tracer) and not in_stateless_scope():
            return
    variable.assign(value)


def cond_skips_work():
    """Whether a pass that `keras.ops.cond` leaves out saves its time."""
    # On XLA a conditional stops the fusion, which costs more than the branch.
    return keras.backend.backend() != "jax"
