"""`benchmarks/reproduce.py`: its fast mode, its refusals and its statistics.

The fast mode runs on TensorFlow only, the backend the study runs on
(docs/reproduction.md): what it calls is tested on every backend by
test_protocol.py and the others, and a run takes one to two minutes.
"""

import json
import re

import keras
import numpy as np
import pytest

from tests.shared.scripts import arm_record
from tests.shared.scripts import import_benchmark
from tests.shared.scripts import run_benchmark

# LoRA trains from FFT at one rate: the choice of `lora_from_base`'s rate is
# tested on hand-written records below.
ARMS = "mft/seed0,mft/seed1,continued_fft/seed0,lora_from_fft/lr0.0001"
# The arms' module fixture is built once, on one worker.
pytestmark = pytest.mark.xdist_group("reproduce")
on_the_study_backend = pytest.mark.one_backend("tensorflow")


def reproduce(tmp_path, *arguments):
    return run_benchmark(
        "reproduce",
        "--fast",
        "--results",
        str(tmp_path / "results"),
        "--weights",
        str(tmp_path / "weights"),
        "--images",
        str(tmp_path),
        *arguments,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reproduce")
    return tmp_path, reproduce(tmp_path, "--arms", ARMS)


@on_the_study_backend
def test_each_arm_is_scored_problem_by_problem(run):
    tmp_path, output = run
    names = sorted(path.name for path in (tmp_path / "results").glob("*.json"))
    # FFT was trained once, for the first arm that needed it, and scored too.
    arms = ["fft"] + ARMS.split(",")
    assert names == sorted(arm.replace("/", "_") + ".json" for arm in arms)
    assert output.count("training FFT first") == 1
    assert (tmp_path / "weights" / "fft_backbone.weights.h5").exists()
    mft = arm_record(tmp_path / "results", "mft/seed0")
    assert mft["backend"] == keras.backend.backend()
    # --fast scores 6 held-out and 4 validation problems, each on its own.
    assert len(mft["held_out"]["loss"]) == 6 and len(mft["validation"]["loss"]) == 4
    assert all(tokens > 0 for tokens in mft["held_out"]["tokens"])
    assert mft["score_budget"] == pytest.approx(0.47, rel=1e-4)
    assert 0 < mft["mask_changed"] and mft["median_score_travel"] > 0
    assert (
        mft["held_out"]["loss"] != arm_record(tmp_path / "results", "mft/seed1")["held_out"]["loss"]
    )
    lora = arm_record(tmp_path / "results", "lora_from_fft/lr0.0001")
    assert lora["learning_rate"] == 1e-4 and lora["held_out"]["loss"] != mft["held_out"]["loss"]


@on_the_study_backend
def test_the_report_tests_the_pre_registered_pair(run):
    tmp_path, output = run
    for pair in ("| mft - fft | 2 vs 1 |", "| mft - continued_fft | 2 vs 1 |"):
        row = next(line for line in output.splitlines() if line.startswith(pair))
        assert len(row.split("|")) == 8 and row.split("|")[-2].strip()  # a Holm p
    assert (tmp_path / "reproduction_forest.png").stat().st_size > 1000


@on_the_study_backend
def test_a_second_run_skips_measured_arms(run):
    tmp_path, _ = run
    output = reproduce(tmp_path, "--arms", "mft/seed0")
    assert "mft/seed0..." not in output


@on_the_study_backend
def test_results_from_other_settings_are_refused(run):
    tmp_path, _ = run
    path = tmp_path / "results" / "mft_seed0.json"
    path.write_text(
        json.dumps({**arm_record(tmp_path / "results", "mft/seed0"), "settings_key": "other"})
    )
    with pytest.raises(SystemExit, match="measured with other settings or another backend"):
        reproduce(tmp_path, "--arms", "mft/seed0")


@pytest.mark.backend_independent
def test_unknown_arm_is_refused_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match=re.escape("Unknown arms ['fft+magic']")):
        reproduce(tmp_path, "--arms", "fft+magic")
    assert not (tmp_path / "results").exists()


@pytest.mark.backend_independent
def test_paired_bootstrap_against_hand_computed_numbers():
    paired_bootstrap = import_benchmark("reproduce").paired_bootstrap
    # Per-problem differences 0 and 1: a resample's mean is 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4.
    difference, low, high, p = paired_bootstrap([[0.0, 1.0]], [[0.0, 0.0]], resamples=20_000)
    assert (difference, low, high) == (0.5, 0.0, 1.0)
    assert p == 1.0  # no resample has a below b
    _, _, _, p = paired_bootstrap([[0.0, 0.0]], [[0.0, 1.0]], resamples=20_000)
    assert p == pytest.approx(0.25, abs=0.01)  # a difference of 0 or more: the resamples of 0
    # A constant difference, whatever the problems and seeds drawn.
    a = np.array([[1.0, 2.0, 3.0]])
    difference, low, high, p = paired_bootstrap(a, a - 0.5, resamples=500)
    assert (difference, low, high) == pytest.approx((0.5, 0.5, 0.5)) and p == 1.0
    # Seeds are resampled too: two seeds far apart widen the interval.
    spread = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    _, low, high, _ = paired_bootstrap(spread, np.zeros((1, 3)), resamples=2_000)
    assert (low, high) == (0.0, 1.0)


@pytest.mark.backend_independent
def test_holm_against_hand_computed_numbers():
    holm = import_benchmark("reproduce").holm
    # Sorted 0.01, 0.03, 0.04: 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04).
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.2]) == pytest.approx([0.6, 0.4])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1


@pytest.mark.backend_independent
def test_lora_is_compared_at_the_rate_best_on_validation_and_the_dose_response_is_drawn(
    tmp_path,
):
    module = import_benchmark("reproduce")

    def write(arm, validation, held_out=1.0, **extra):
        scores = {"loss": [held_out, held_out], "accuracy": [0.5, 0.5]}
        record = {"arm": arm, "seconds": 60.0, "held_out": scores, **extra}
        record["validation"] = {"loss": [validation, validation], "accuracy": [0.5, 0.5]}
        path = tmp_path / "results" / f"{arm.replace('/', '_')}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(record))
        return record

    records = {arm: write(arm, 1.0) for arm in ("fft", "mft/seed0", "mft/seed1")}
    # 3e-4 is best on validation although 1e-3 is best on the held-out problems.
    for rate, validation, held_out in ((1e-4, 0.9, 0.9), (3e-4, 0.8, 0.95), (1e-3, 0.85, 0.7)):
        records[f"lora_from_fft/lr{rate}"] = write(f"lora_from_fft/lr{rate}", validation, held_out)
    assert module.chosen_lora_rate(records) == 3e-4
    assert module.chosen_lora_rate({**records, "lora_from_fft/lr0.001": None}) is None
    write("lora_from_base", 0.9, learning_rate=3e-4)
    for budget, validation in ((0.05, 1.0), (0.15, 0.95), (1.5, 0.9)):
        write(f"dose/B{budget}", validation)

    output = reproduce(tmp_path, "--report")
    assert (
        "chosen on validation loss (0.0001: 0.9000, 0.0003: 0.8000, 0.001: 0.8500): 0.0003"
        in output
    )
    assert "| lora_from_fft/lr0.0003 - fft | 1 vs 1 | -0.0500 |" in output
    assert "| mft - lora_from_fft/lr0.0003 | 2 vs 1 | +0.0500 |" in output
    assert "| lora_from_base - fft | 1 vs 1 | +0.0000 |" in output
    assert (tmp_path / "reproduction_dose.png").stat().st_size > 1000
