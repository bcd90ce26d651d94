"""MaskFineTuner: figures recomputed from the scores, schedule, snapshots, stops."""

import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking.mask import num_removed
from tests.shared.models import logits_of
from tests.shared.models import masked
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy
from tests.shared.models import token_batch
from tests.shared.references import numpy_keep_mask


def wrapped(seed=0):
    model = keras_mft.wrap(tiny_llama(), layers="0:2", sparsity=0.2, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.02))
    return model


class Recorder(keras.callbacks.Callback):
    """Keeps the scores and removed counts it sees, independently of MFT code."""

    def __init__(self):
        super().__init__()
        self.epoch_scores, self.step_removed, self.epoch_logits = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.step_removed.append([layer.num_removed for layer in masked(self.model)])

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_scores.append([to_numpy(layer.scores).copy() for layer in masked(self.model)])
        self.epoch_logits.append(logits_of(self.model, token_batch()))


def fit(model, callbacks, epochs=3, batch_size=2, sequences=4):
    batch = token_batch(batch_size=sequences)
    labels = np.roll(batch["token_ids"], -1, axis=1)
    return model.fit(
        batch, labels, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks
    )


def test_logged_figures_match_numpy():
    model = wrapped()
    initial = [to_numpy(layer.scores).copy() for layer in masked(model)]
    recorder = Recorder()
    history = fit(model, [keras_mft.MaskFineTuner(per_matrix=True), recorder]).history

    def masks(scores):
        return [numpy_keep_mask(s, layer.num_removed) for s, layer in zip(scores, masked(model))]

    total = sum(s.size for s in initial)
    previous = first = masks(initial)
    for epoch, scores in enumerate(recorder.epoch_scores):
        current = masks(scores)
        removed = sum(int(np.sum(m == 0)) for m in current)
        flips = sum(int(np.sum(a != b)) for a, b in zip(current, previous))
        changed = sum(int(np.sum(a != b)) for a, b in zip(current, first))
        assert history["mask_sparsity"][epoch] == pytest.approx(removed / total)
        assert history["mask_flips"][epoch] == pytest.approx(flips / total)
        assert history["mask_changed"][epoch] == pytest.approx(changed / total)
        # Adam(0.02) for 2 steps an epoch, over the initial scores' std.
        spread = np.std(np.concatenate([s.reshape(-1) for s in initial]))
        assert history["score_budget"][epoch] == pytest.approx(0.02 * 2 * (epoch + 1) / spread)
        previous = current
    assert history["mask_changed"][-1] > 0
    groups = {}
    for layer in masked(model):
        key = "sparsity/" + layer.kernel_path.rsplit("/", 1)[0]
        size = int(np.prod(layer.scores.shape))
        expected = num_removed(size, 0.2)
        assert history[key][-1] == pytest.approx(expected / size)
        group = groups.setdefault(layer.name, [0, 0])
        group[0], group[1] = group[0] + expected, group[1] + size
    assert len(groups) > 1  # one figure per projection, summed over the blocks
    for name, (removed_here, size) in groups.items():
        assert history[f"sparsity/{name}"][-1] == pytest.approx(removed_here / size)


def test_step_reports_and_a_missing_monitor(tmp_path):
    tuner = keras_mft.MaskFineTuner(report_every=1, snapshot_dir=tmp_path)
    with pytest.warns(UserWarning, match="val_loss"):
        history = fit(wrapped(), [tuner], epochs=1).history
    assert "mask_flips" in history
    assert list(tmp_path.iterdir()) == []


def test_ramp_reaches_the_target_at_the_promised_step():
    model = wrapped()
    targets = [layer.num_removed for layer in masked(model)]
    sizes = [int(np.prod(layer.scores.shape)) for layer in masked(model)]
    recorder = Recorder()
    fit(model, [keras_mft.MaskFineTuner(ramp_steps=4), recorder], epochs=3)
    steps = recorder.step_removed
    assert len(steps) == 6
    assert steps[0] == [0] * len(sizes)
    for step in (4, 5):
        assert steps[step] == targets
    for step in range(1, 4):
        assert steps[step] == [num_removed(n, 0.2 * step / 4) for n in sizes]
        assert all(a <= b for a, b in zip(steps[step - 1], steps[step]))


def test_an_unfinished_ramp_is_what_training_used():
    model = wrapped()
    fit(model, [keras_mft.MaskFineTuner(ramp_steps=100)], epochs=1)
    for layer in masked(model):
        size = int(np.prod(layer.scores.shape))
        assert layer.num_removed == num_removed(size, 0.2 * 1 / 100)
        assert int(np.sum(to_numpy(layer.hard_mask()) == 0)) == layer.num_removed


def test_snapshots_reload_to_identical_logits(tmp_path):
    model = wrapped()
    recorder = Recorder()
    tuner = keras_mft.MaskFineTuner(
        snapshot_dir=tmp_path / "run", monitor="loss", save_best_only=False
    )
    # As a resumed run whose earlier epochs reached a loss of 0: no epoch beats it.
    resumed = keras_mft.MaskFineTuner(
        snapshot_dir=tmp_path / "resumed", monitor="loss", initial_value_threshold=0.0
    )
    history = fit(model, [tuner, resumed, recorder]).history
    assert not list((tmp_path / "resumed").iterdir())
    tmp_path = tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.mask",
        "epoch-001.mask",
        "epoch-002.mask",
        "epoch-003.mask",
    ]
    fresh = wrapped(seed=42)
    keras_mft.load_masks(fresh, tmp_path / "epoch-002.mask")
    np.testing.assert_array_equal(logits_of(fresh, token_batch()), recorder.epoch_logits[1])
    best = int(np.argmin(history["loss"]))
    keras_mft.load_masks(fresh, tmp_path / "best.mask")
    np.testing.assert_array_equal(logits_of(fresh, token_batch()), recorder.epoch_logits[best])


def test_early_stop_when_masks_settle_then_bake():
    model = wrapped()
    tuner = keras_mft.MaskFineTuner(stop_below_flips=1.0, patience=2, bake_on_train_end=True)
    history = fit(model, [tuner], epochs=10).history
    assert len(history["loss"]) == 2
    assert not masked(model)


@pytest.mark.backend_independent
@pytest.mark.parametrize("kwargs", [{"report_every": 0}, {"ramp_steps": 2.5}, {"mode": "best"}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        keras_mft.MaskFineTuner(**kwargs)


class PoisonFinalNorm(keras.callbacks.Callback):
    """Makes the loss NaN from the start of epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            norm = self.model.backbone.layer_norm
            norm.scale.assign(np.full(norm.scale.shape, np.nan, "float32"))


def test_non_finite_loss_stops_and_keeps_the_last_good_snapshot(tmp_path):
    model = wrapped()
    tuner = keras_mft.MaskFineTuner(
        snapshot_dir=str(tmp_path), monitor="loss", save_best_only=False, bake_on_train_end=True
    )
    with pytest.warns(UserWarning, match="loss became nan at step 3"):
        history = fit(model, [tuner, PoisonFinalNorm(epoch=1)], epochs=3)
    assert tuner.non_finite_loss_step == 3
    assert len(history.history["loss"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.mask", "epoch-001.mask"]
    assert (tmp_path / "best.mask").read_bytes() == (tmp_path / "epoch-001.mask").read_bytes()
    assert masked(model), "a model whose loss went NaN is not baked"
