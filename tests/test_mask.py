"""Mask selection and the straight-through estimator, against numpy."""

from decimal import Decimal

import keras
import numpy as np
import pytest

from keras_mft.masking import backends
from keras_mft.masking import mask as mask_module
from keras_mft.masking.backends import histogram
from keras_mft.masking.backends import histogram_of_bin
from keras_mft.masking.mask import check_sparsity
from keras_mft.masking.mask import keep_mask
from keras_mft.masking.mask import masked_kernel
from keras_mft.masking.mask import num_removed
from keras_mft.masking.mask import select
from tests.shared.models import gradient
from tests.shared.models import to_numpy
from tests.shared.references import numpy_keep_mask
from tests.shared.references import numpy_threshold


def assert_every_num_removed_matches_numpy(scores):
    for removed in range(scores.size):
        mask = to_numpy(keep_mask(keras.ops.convert_to_tensor(scores), removed))
        np.testing.assert_array_equal(mask, numpy_keep_mask(scores, removed))


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "size, sparsity", [(100, 0.29), (10, 0.1), (7, 0.5), (4096, 0.1), (5, 0.0), (3, 0.99)]
)
def test_num_removed_is_floor_of_the_written_ratio(size, sparsity):
    assert num_removed(size, sparsity) == int(Decimal(str(sparsity)) * size)


@pytest.mark.parametrize("shape", [(7,), (16, 24), (8, 4, 6)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_keep_mask_matches_numpy(shape, sparsity):
    scores = np.random.default_rng(0).normal(0, 0.02, shape).astype("float32")
    removed = num_removed(scores.size, sparsity)
    mask = keep_mask(keras.ops.convert_to_tensor(scores), removed)
    assert keras.backend.standardize_dtype(mask.dtype) == "bool"
    np.testing.assert_array_equal(to_numpy(mask), numpy_keep_mask(scores, removed))
    assert int(np.sum(~to_numpy(mask))) == removed


def test_ties_are_broken_by_position():
    # Many equal |scores|, including -0.0 and signs: the lower index goes first.
    scores = np.array([[0.5, -0.5, 0.0, -0.0], [0.5, 0.25, -0.25, 0.0]], "float32")
    assert_every_num_removed_matches_numpy(scores)


def test_entries_of_other_high_bins_do_not_count_in_the_second_histogram():
    # 1.0, 1.0000001 and 1.0000002 share their high 15 bits and differ in the
    # low 16; 0.5, 2.0, 4.0 and 8.0 have the same low bits as 1.0 (all zero)
    # in other high bins, so counting them there would move the threshold.
    scores = np.array([[2.0, 1.0000002, 0.5, 4.0], [1.0000001, 8.0, 1.0, -2.0]], "float32")
    assert_every_num_removed_matches_numpy(scores)


def test_histogram_matches_numpy():
    bins = np.array([0, 3, 3, 5, 7, 7, 7], "int32")
    counts = histogram(keras.ops.convert_to_tensor(bins), 8)
    assert keras.backend.standardize_dtype(counts.dtype) == "int32"
    np.testing.assert_array_equal(to_numpy(counts), np.bincount(bins, minlength=8))


@pytest.mark.parametrize("copies", [1, 4])
def test_histogram_in_copies_matches_numpy(copies):
    # 37 entries: not a multiple of the copies. JAX and TensorFlow must also
    # drop values out of range, in every copy; PyTorch is never given any.
    bins = np.random.default_rng(0).integers(0, 8, 37).astype("int32")
    given = bins if keras.backend.backend() == "torch" else np.concatenate([bins, [8, 9, 2**30]])
    counts = histogram(keras.ops.convert_to_tensor(given.astype("int32")), 8, copies=copies)
    assert keras.backend.standardize_dtype(counts.dtype) == "int32"
    np.testing.assert_array_equal(to_numpy(counts), np.bincount(bins, minlength=8))


def test_keep_mask_with_the_histograms_of_a_gpu_matches_numpy(monkeypatch):
    # On a GPU the first histogram counts into copies of its bins.
    monkeypatch.setattr(backends, "_on_gpu", lambda tensor: True)
    scores = np.random.default_rng(1).normal(0, 0.02, (40, 24)).astype("float32")
    scores[3, :] = scores[0, 5]  # ties across rows
    for removed in (0, 1, 96, 100, 500, 959):
        mask = keep_mask(keras.ops.convert_to_tensor(scores), removed)
        np.testing.assert_array_equal(to_numpy(mask), numpy_keep_mask(scores, removed))


@pytest.mark.parametrize("high_bin", [2, 0, 5])  # 5: a bin with no entries
def test_histogram_of_bin_counts_the_low_bits_of_that_bin_only(high_bin):
    # Bins of 4 low bits; the keys of high bin 2 are 32..47. The others share
    # low bits with them (3 = 35 & 15, 51 & 15, ...) and must not be counted.
    keys = np.array([35, 3, 51, 32, 35, 47, 99, 2**30 + 35, 0, 46], "int32")
    high = keys >> 4
    counts = histogram_of_bin(
        keras.ops.convert_to_tensor(keys),
        keras.ops.convert_to_tensor(high),
        keras.ops.convert_to_tensor(high_bin, "int32"),
        4,
    )
    assert keras.backend.standardize_dtype(counts.dtype) == "int32"
    expected = np.bincount(keys[high == high_bin] & 15, minlength=16)
    np.testing.assert_array_equal(to_numpy(counts), expected)


@pytest.mark.parametrize("on_gpu", [False, True])
@pytest.mark.parametrize("moved_bins", [0, -1, 1, 3000, "none"])
def test_select_is_exact_wherever_the_last_threshold_was(moved_bins, on_gpu, monkeypatch):
    # A GPU starts from the last threshold; a CPU always searches in full.
    monkeypatch.setattr(backends, "_on_gpu", lambda tensor: on_gpu)
    scores = np.random.default_rng(2).normal(0, 0.02, (30, 20)).astype("float32")
    removed = 60
    threshold = numpy_threshold(scores, removed)
    last = -1 if moved_bins == "none" else threshold + moved_bins * 2**16
    keep, new = select(keras.ops.convert_to_tensor(scores), removed, last)
    np.testing.assert_array_equal(to_numpy(keep), numpy_keep_mask(scores, removed))
    assert int(to_numpy(new)) == threshold


def test_on_a_gpu_a_last_threshold_in_the_right_bin_skips_the_full_histogram(monkeypatch):
    monkeypatch.setattr(backends, "_on_gpu", lambda tensor: True)
    rng = np.random.default_rng(3)
    before = rng.normal(0, 0.02, (30, 20)).astype("float32")
    removed = 60
    _, last = select(keras.ops.convert_to_tensor(before), removed)
    # A typical step moves every score a little; the k-th key stays in its
    # 2**16-wide high bin, so the 32,768-bin histogram must not run.
    after = before * (1 + 1e-5 * rng.standard_normal(before.shape)).astype("float32")
    assert numpy_threshold(after, removed) >> 16 == int(to_numpy(last)) >> 16

    def refuse(*args, **kwargs):
        raise AssertionError("the full histogram ran")

    monkeypatch.setattr(mask_module, "histogram", refuse)
    keep, new = select(keras.ops.convert_to_tensor(after), removed, last)
    np.testing.assert_array_equal(to_numpy(keep), numpy_keep_mask(after, removed))
    assert int(to_numpy(new)) == numpy_threshold(after, removed)
    # A last threshold one high bin away misses, and the full search runs.
    with pytest.raises(AssertionError, match="full histogram"):
        select(keras.ops.convert_to_tensor(after), removed, to_numpy(last) + 2**16)


def test_all_equal_scores():
    scores = np.full((10, 10), 0.3, "float32")
    mask = to_numpy(keep_mask(keras.ops.convert_to_tensor(scores), 37))
    assert mask.reshape(-1)[:37].sum() == 0 and mask.reshape(-1)[37:].min() == 1


def test_ties_in_rows_longer_than_float32_counts_exactly():
    # Each row's ties are counted in float32 only while a count is exact there:
    # 2**24 + 3 rounds to 2**24 + 4, which would move the removal one row down.
    columns = 2**24 + 3
    scores = np.zeros((2, columns), "float32")
    mask = to_numpy(keep_mask(keras.ops.convert_to_tensor(scores), columns + 1))
    assert not mask[0].any()
    assert not mask[1, 0] and mask[1, 1:].all()


@pytest.mark.backend_independent
@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.0, 1.5, "0.1", True, None])
def test_check_sparsity_refuses(bad):
    with pytest.raises((TypeError, ValueError), match=r"\[0, 1\)"):
        check_sparsity(bad)


@pytest.mark.parametrize("shape", [(6, 10), (6, 2, 5)])
def test_straight_through_gradient_matches_analytic(shape):
    """dL/ds = sign(s) * W * dL/dW_eff for L = sum(G * W_eff), W_eff = W * m."""
    rng = np.random.default_rng(3)
    scores_value = rng.normal(0, 0.02, shape).astype("float32")
    scores_value.reshape(-1)[0] = 0.0  # sign(0) = 0: no gradient there
    kernel = rng.normal(0, 1.0, shape).astype("float32")
    upstream = rng.normal(0, 1.0, shape).astype("float32")
    removed = num_removed(scores_value.size, 0.3)
    scores = keras.Variable(scores_value)

    def loss():
        hard = keep_mask(keras.ops.stop_gradient(scores.value), removed)
        return keras.ops.sum(
            keras.ops.multiply(upstream, masked_kernel(kernel, scores.value, hard))
        )

    np.testing.assert_allclose(
        to_numpy(loss()),
        np.sum(upstream * kernel * numpy_keep_mask(scores_value, removed)),
        rtol=1e-5,
    )
    expected = np.sign(scores_value) * kernel * upstream
    np.testing.assert_allclose(to_numpy(gradient(loss, scores)), expected, rtol=1e-6)


def test_masked_kernel_forward_is_exactly_the_kept_kernel_entries():
    rng = np.random.default_rng(4)
    scores = keras.ops.convert_to_tensor(rng.normal(0, 0.02, (32, 32)).astype("float32"))
    kernel = rng.normal(0, 1.0, (32, 32)).astype("float32")
    kernel[0, :4] = [np.inf, -np.inf, np.nan, -0.0]  # removed below, whatever they hold
    keep = to_numpy(keep_mask(scores, num_removed(32 * 32, 0.1)))
    keep[0, :4] = False
    masked = to_numpy(masked_kernel(kernel, scores, keras.ops.convert_to_tensor(keep)))
    np.testing.assert_array_equal(masked, np.where(keep, kernel, 0.0))
