"""`benchmarks/converged.py`: its data split, its fast mode and its statistics.

The fast mode runs on TensorFlow only, the backend the study runs on
(docs/converged.md); what it calls is tested on every backend elsewhere.
"""

import collections
import json
import re
import shutil

import numpy as np
import pytest

from tests.shared.scripts import arm_record
from tests.shared.scripts import import_benchmark
from tests.shared.scripts import run_benchmark

# ARC-Easy's arms: GSM8K's run the first study's code on the same training path.
ARMS = "arc/mft/seed0,arc/continued_fft/seed0"
pytestmark = pytest.mark.xdist_group("converged")
on_the_study_backend = pytest.mark.one_backend("tensorflow")
converged = import_benchmark("converged")


def study(tmp_path, *arguments):
    paths = ["--results", str(tmp_path / "results"), "--weights", str(tmp_path / "weights")]
    return run_benchmark("converged", "--fast", *paths, "--images", str(tmp_path), *arguments)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("converged")
    return tmp_path, study(tmp_path, "--arms", ARMS)


@pytest.mark.backend_independent
def test_arc_easy_is_split_by_a_fixed_hash():
    questions = converged.arc_easy_questions()
    assert len(questions) == 570 + 2376  # the validation and test splits, no id twice
    counts = collections.Counter(converged.arc_split(q["id"]) for q in questions)
    # The pre-registered sizes (docs/converged.md).
    assert counts == {"train": 1697, "validation": 234, "held_out": 1015}
    first = questions[0]  # as lm-eval's arc_easy asks it
    assert first["query"].startswith("Question: ") and first["query"].endswith("\nAnswer:")
    assert 0 <= first["gold"] < len(first["choices"])


@on_the_study_backend
def test_each_arm_is_scored_question_by_question(run):
    tmp_path, output = run
    names = sorted(path.name for path in (tmp_path / "results").glob("*.json"))
    # The FFT grid ran once, for the first arm that needed it.
    fft = [f"arc/fft/lr{rate}" for rate in ("0.0001", "0.001")]
    assert names == sorted(arm.replace("/", "_") + ".json" for arm in fft + ARMS.split(","))
    for arm in fft:
        fft_record = arm_record(tmp_path / "results", arm)
        epochs = fft_record["epochs"]["val_loss"]
        assert 1 <= len(epochs) <= 2 and fft_record["best_epoch"] <= len(epochs)
    arc = arm_record(tmp_path / "results", "arc/mft/seed0")
    # --fast holds 8 held-out questions, which lm-eval scores, and 6 for
    # validation, scored by loss (the choices are made on validation loss).
    assert {len(arc["held_out"][m]) for m in ("acc", "acc_norm", "loss")} == {8}
    assert set(np.unique(arc["held_out"]["acc"])) <= {0.0, 1.0}
    assert len(arc["validation"]["loss"]) == 6 and "acc" not in arc["validation"]
    assert "Continued FFT's gain in validation loss" in output  # the regime check
    assert "| arc | mft vs fft | acc |" in output
    assert "| arc | mft vs continued_fft | acc |" in output
    assert (tmp_path / "converged_forest.png").exists()


@on_the_study_backend
def test_an_fft_model_whose_weights_are_gone_is_trained_again_to_its_kept_epoch(run, tmp_path):
    shutil.copytree(run[0] / "results", tmp_path / "results")  # the records, no weights
    output = study(tmp_path, "--arms", "arc/random_mask")
    again = re.search(r"validation loss (\S+) \(recorded (\S+)\)", output)
    assert "epoch(s) again" in output and float(again[1]) == pytest.approx(
        float(again[2]), abs=1e-4
    )
    assert len(list((tmp_path / "weights").glob("arc_fft_*.weights.h5"))) == 1


@on_the_study_backend
def test_results_of_other_settings_are_refused(run, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    fake = {"arm": "arc/base", "settings_key": "other", "held_out": {}, "validation": {}}
    (results / "arc_base.json").write_text(json.dumps(fake))
    with pytest.raises(SystemExit, match="other settings or another backend"):
        study(tmp_path, "--arms", "arc/base")


@pytest.mark.backend_independent
def test_improvement_is_oriented_and_matches_a_hand_computed_bootstrap():
    # One seed, four questions: a answers question 0 that b misses, so the
    # difference in accuracy is 1/4; a resample favours a unless it never
    # draws question 0, which happens with probability (3/4)**4 = 0.316.
    a, b = np.array([[1.0, 1, 0, 1]]), np.array([[0.0, 1, 0, 1]])
    difference, low, high, p = converged.improvement(a, b, "acc")
    assert difference == 0.25 and low == 0.0 and high >= 0.25
    assert abs(p - 0.75**4) < 0.015
    # A loss: lower is better, so the same numbers are a's loss being worse.
    difference, low, high, p = converged.improvement(a, b, "loss")
    assert difference == -0.25 and high == 0.0
    assert abs(p - 1.0) < 1e-9  # no resample has a's loss below b's


@pytest.mark.backend_independent
def test_the_verdict_says_which_of_the_four_answers_holds():
    assert converged.verdict(0.002, 0.02, holm_p=0.01, sesoi=0.01).startswith("MFT better")
    assert converged.verdict(-0.03, -0.01, holm_p=1.0, sesoi=0.01) == "MFT worse"
    assert converged.verdict(-0.008, 0.009, holm_p=0.3, sesoi=0.01) == (
        "no effect larger than 0.01"
    )
    assert converged.verdict(-0.02, 0.015, holm_p=0.2, sesoi=0.01) == (
        "not detected; from -0.0200 to +0.0150 not excluded"
    )
