"""`benchmarks/reproduce.py` in its fast mode: arms, caching, resuming, report."""

import json
import re

import keras
import pytest

from tests.benchmark_scripts import run_benchmark

ARMS = "fft+mft/seed0,fft+mft/seed1,fft+continued_fft/seed0,fft+continued_fft/seed1"
# The arms' module fixture is built once, on one worker.
pytestmark = pytest.mark.xdist_group("reproduce")


def reproduce(tmp_path, *arguments):
    return run_benchmark(
        "reproduce", "--fast", "--results", str(tmp_path / "results"),
        "--weights", str(tmp_path / "weights"), "--images", str(tmp_path), *arguments,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reproduce")
    return tmp_path, reproduce(tmp_path, "--arms", ARMS)


def test_each_arm_is_measured_and_written(run):
    tmp_path, output = run
    names = sorted(path.name for path in (tmp_path / "results").glob("*.json"))
    assert names == sorted(arm.replace("/", "_") + ".json" for arm in ARMS.split(","))
    record = json.loads((tmp_path / "results" / "fft+mft_seed0.json").read_text())
    assert record["backend"] == keras.backend.backend()
    assert set(record["metrics"]) >= {"loss", "accuracy", "exact_match"}
    # The FFT stage was trained once, for the first arm that needed it.
    assert output.count("training FFT first") == 1
    assert (tmp_path / "weights" / "fft_backbone.weights.h5").exists()


def test_seeds_differ_and_are_summarised(run):
    tmp_path, output = run
    losses = [
        json.loads((tmp_path / "results" / f"fft+mft_seed{seed}.json").read_text())["metrics"]["loss"]
        for seed in (0, 1)
    ]
    assert losses[0] != losses[1]
    assert "| loss | " in output and "(n=2)" in output


def test_a_second_run_skips_measured_arms(run):
    tmp_path, _ = run
    output = reproduce(tmp_path, "--arms", "fft+mft/seed0")
    assert "fft+mft/seed0..." not in output


def test_results_from_other_settings_are_refused(run):
    tmp_path, _ = run
    path = tmp_path / "results" / "fft+mft_seed0.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "settings_key": "other"}))
    with pytest.raises(SystemExit, match="measured with other settings or another backend"):
        reproduce(tmp_path, "--arms", "fft+mft/seed0")


@pytest.mark.backend_independent
def test_unknown_arm_is_refused_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match=re.escape("Unknown arms ['fft+magic']")):
        reproduce(tmp_path, "--arms", "fft+magic")
    assert not (tmp_path / "results").exists()
