"""`keras_mft.plot`: each figure shows the numbers it is given, and is saved."""

import matplotlib.image
import numpy as np
import pytest

import keras_mft
from keras_mft import plot


def saved_image(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas
    return image


@pytest.mark.backend_independent
def test_training_curve_plots_every_step(tmp_path):
    figure = plot.training_curve([3.0, 2.5, 2.25], tmp_path / "curve.png")
    line = figure.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), [3.0, 2.5, 2.25])
    saved_image(tmp_path / "curve.png")


def test_mask_change_shows_the_percentage_per_block_and_projection(model, tmp_path):
    keras_mft.wrap(model, layers="0:2", targets=["q", "down"], seed=0)
    before = keras_mft.masks_of(model)
    after = {name: mask.copy() for name, mask in before.items()}
    query = "transformer_layer_1/self_attention/query/kernel"
    after[query].reshape(-1)[:10] ^= True
    figure = plot.mask_change(before, after, tmp_path / "change.png")
    grid = figure.axes[0].images[0].get_array()
    assert grid.shape == (2, 2)  # blocks 0 and 1, projections q and down
    assert grid[1, 0] == pytest.approx(100 * 10 / after[query].size)
    assert grid[0, 0] == grid[0, 1] == grid[1, 1] == 0
    saved_image(tmp_path / "change.png")


@pytest.mark.backend_independent
def test_mask_flips_plots_the_history_of_mask_fine_tuner(tmp_path):
    history = {"loss": [2.0, 1.5], "mask_flips": [0.02, 0.01], "mask_changed": [0.02, 0.025]}
    figure = plot.mask_flips(history, tmp_path / "flips.png")
    flips, changed = figure.axes[0].lines
    np.testing.assert_allclose(flips.get_ydata(), [2.0, 1.0])
    np.testing.assert_allclose(changed.get_ydata(), [2.0, 2.5])
    saved_image(tmp_path / "flips.png")


@pytest.mark.backend_independent
def test_mask_flips_without_mask_fine_tuner_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="MaskFineTuner"):
        plot.mask_flips({"loss": [1.0]}, tmp_path / "flips.png")
    assert not (tmp_path / "flips.png").exists()


def test_score_histogram_counts_kept_and_removed_entries(model, tmp_path):
    keras_mft.wrap(model, layers="0:1", sparsity=0.25, seed=0)
    scores, masks = keras_mft.scores_of(model), keras_mft.masks_of(model)
    assert set(scores) == set(masks)
    figure = plot.score_histogram(scores, masks, tmp_path / "scores.png", bins=20)
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    kept_total = sum(int(mask.sum()) for mask in masks.values())
    removed_total = sum(int((~mask).sum()) for mask in masks.values())
    assert sum(heights[:20]) == kept_total
    assert sum(heights[20:]) == removed_total
    assert removed_total == sum(int(0.25 * mask.size) for mask in masks.values())
    saved_image(tmp_path / "scores.png")


def test_score_histogram_refuses_mismatched_kernels(model, tmp_path):
    keras_mft.wrap(model, layers="0:1", seed=0)
    masks = keras_mft.masks_of(model)
    with pytest.raises(ValueError, match="same kernels"):
        plot.score_histogram({}, masks, tmp_path / "scores.png")
