"""`keras_mft.train`: the run directory, its results and what it refuses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_mft
from keras_mft.training import run_directory
from tests.shared.models import to_numpy

PAIRS = {"prompts": ["What is 2 + 2?", "Say hi."] * 3, "responses": ["4", "Hi!"] * 3}


@pytest.fixture
def wrapped():
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2", seed=0)
    tokenizer = model.preprocessor.tokenizer
    model.preprocessor = None
    return model, keras_mft.instruction_dataset(tokenizer, PAIRS, sequence_length=32)


def test_a_run_writes_its_results_and_is_never_overwritten(wrapped, tmp_path):
    model, data = wrapped
    out = tmp_path / "run"
    result = keras_mft.train(model, data, epochs=2, batch_size=2, out_dir=out, verbose=0)
    assert sorted(os.listdir(out)) == [
        "best.mask",
        "history.json",
        "mask_change.png",
        "masks.mask",
        "run.json",
        "run.lock",
        "training_curve.png",
    ]
    history = json.loads((out / "history.json").read_text())
    assert history == {"epochs": result["epochs"], "step_losses": result["step_losses"]}
    assert len(history["epochs"]["loss"]) == 2 and len(history["step_losses"]) == result["updates"]
    assert result["score_budget"] == pytest.approx(history["epochs"]["score_budget"][-1], rel=1e-4)
    settings = json.loads((out / "run.json").read_text())
    # What a resumed run must repeat; where the scores began, its backup restores.
    assert settings["masks"] == [
        {"layers": "0:2", "targets": None, "sparsity": None, "attention_sparsity": None}
        | {"mlp_sparsity": None, "selection": "per_matrix"}
    ]
    assert settings["learning_rate"] is None and settings["score_budget"] is None
    fresh = keras_mft.load_masks(keras_mft.tiny_smollm2(), out / "masks.mask")
    for path, mask in keras_mft.masks_of(model).items():
        np.testing.assert_array_equal(keras_mft.masks_of(fresh)[path], mask)
    before = {name: (out / name).read_bytes() for name in ("masks.mask", "history.json")}
    with pytest.raises(ValueError, match="holds a finished run"):
        keras_mft.train(model, data, out_dir=out, verbose=0)
    with pytest.raises(ValueError, match="holds a finished run"):
        keras_mft.train(model, data, out_dir=out, resume=True, verbose=0)
    assert before == {name: (out / name).read_bytes() for name in before}


def test_full_fine_tuning_takes_the_same_run(tmp_path):
    model = keras_mft.tiny_smollm2()
    tokenizer = model.preprocessor.tokenizer
    model.preprocessor = None
    data = keras_mft.instruction_dataset(tokenizer, PAIRS, sequence_length=32)
    before = to_numpy(model.backbone.token_embedding.embeddings).copy()
    # An epoch longer than the run (here 10**12 steps) is the run.
    result = keras_mft.train(
        model, data, epochs=1, batch_size=3, steps_per_epoch=10**12, out_dir=tmp_path, verbose=0
    )
    assert not np.array_equal(to_numpy(model.backbone.token_embedding.embeddings), before)
    assert result["learning_rate"] == 2e-5 and result["score_budget"] is None
    assert sorted(os.listdir(tmp_path)) == [
        "history.json",
        "run.json",
        "run.lock",
        "training_curve.png",
    ]


@pytest.mark.backend_independent
def test_progress_reads_back_the_epochs_a_backup_restored(tmp_path):
    path = tmp_path / "progress.json"
    saved = {"epochs": {"loss": [2.5, 1.5, 1.75]}, "step_losses": [3, 2, 2, 1, 2, 1]}
    path.write_text(json.dumps(saved))
    assert run_directory.Progress(str(path), 0, 2).best("loss") is None  # a run from the start
    progress = run_directory.Progress(str(path), 2, 2)  # the backup holds two epochs of two steps
    assert progress.epochs == {"loss": [2.5, 1.5]} and progress.step_losses == [3, 2, 2, 1]
    assert progress.best("loss") == 1.5
    for damaged in ({"epochs": {"loss": [2.5]}, "step_losses": []}, {"epochs": []}, [1]):
        path.write_text(json.dumps(damaged))
        with pytest.raises(ValueError, match="holds no logs of 2 epochs.*Delete"):
            run_directory.Progress(str(path), 2, 2)
    path.write_text('{"epochs": {"loss": ["x", 1]}, "step_losses": [1, 2, 3, 4]}')
    with pytest.raises(ValueError, match="is damaged"):
        run_directory.Progress(str(path), 2, 2)


HOLD_THE_LOCK = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("holding", flush=True)
time.sleep(600)
"""


def test_a_second_run_is_refused_while_one_trains_and_not_after_a_kill(wrapped, tmp_path):
    model, data = wrapped
    out = tmp_path / "run"
    out.mkdir()
    # Another process training into `out`: it holds the lock (no Keras needed).
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(out / run_directory.LOCK_FILE)],
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout.readline() == b"holding\n"
        with pytest.raises(ValueError, match="Another run is training into .*Wait for it"):
            keras_mft.train(model, data, epochs=1, batch_size=3, out_dir=out, verbose=0)
        assert os.listdir(out) == [run_directory.LOCK_FILE]  # nothing written
    finally:
        other.kill()  # as kill -9: the operating system releases its lock
        other.wait()
    keras_mft.train(model, data, epochs=1, batch_size=3, out_dir=out, verbose=0)
    assert (out / "history.json").is_file()
