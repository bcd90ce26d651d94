"""CrashSafeBackupAndRestore: a kill at any moment of a save leaves a backup to resume."""

import json
import os

import keras
import numpy as np
import pytest

import keras_mft
from tests.shared.models import to_numpy

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 3)).astype("float32")
Y = RNG.standard_normal((8, 4)).astype("float32")
KERNEL = RNG.standard_normal((3, 4)).astype("float32")


def fit(epochs, callbacks=(), kernel=KERNEL):
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(kernel))
    model = keras.Model(inputs, dense(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.fit(
        X, Y, batch_size=4, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks)
    )
    return [to_numpy(weight) for weight in model.weights]


def backup(directory):
    return keras_mft.CrashSafeBackupAndRestore(str(directory))


@pytest.fixture
def killed_after_one_epoch(tmp_path):
    """A two-epoch run killed during its second epoch: only epoch 1 is backed up."""
    directory = tmp_path / "backup"
    fit(1, [keras_mft.CrashSafeBackupAndRestore(str(directory), delete_checkpoint=False)])
    metadata = json.loads((directory / "latest" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1
    return directory


def assert_resumes(directory):
    # Built from other weights: only the backup can make it end where an
    # uninterrupted run ends.
    resumed_run = fit(2, [backup(directory)], kernel=np.zeros_like(KERNEL))
    for resumed, expected in zip(resumed_run, fit(2), strict=True):
        np.testing.assert_allclose(resumed, expected, rtol=1e-6, atol=1e-6)
    assert not directory.exists()


def test_a_kill_while_writing_the_next_backup(killed_after_one_epoch):
    directory = killed_after_one_epoch
    (directory / "next").mkdir()
    (directory / "next" / "latest.weights.h5").write_bytes(b"\x89HDF")
    assert_resumes(directory)


def test_a_kill_between_the_two_renames(killed_after_one_epoch):
    directory = killed_after_one_epoch
    os.rename(directory / "latest", directory / "previous")
    assert_resumes(directory)


def test_a_damaged_backup_says_what_to_do(killed_after_one_epoch):
    directory = killed_after_one_epoch
    weights = directory / "latest" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"backup in {directory} is damaged.*Delete {directory}"):
        fit(2, [backup(directory)])
    metadata = directory / "latest" / "training_metadata.json"
    assert backup(directory).epochs_done(planned=2) == 1
    # Hand-edited or garbled: refused before any use, not read as 0 epochs.
    for text in ('{"epoch": "1"}', '{"epoch": 3}', '{"epoch": -1}', '{"batch": 1}', "[1]", "{"):
        metadata.write_text(text)
        with pytest.raises(ValueError, match="holds no epoch from 0 to 2.*Delete"):
            backup(directory).epochs_done(planned=2)
    os.remove(weights)
    with pytest.raises(ValueError, match="is damaged"):
        fit(2, [backup(directory)])
