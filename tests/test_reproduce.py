"""`benchmarks/reproduce.py` in its fast mode: arms, caching, resuming, report."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

SCRIPT = pathlib.Path(__file__).parent.parent / "benchmarks" / "reproduce.py"
ARMS = "fft+mft/seed0,fft+mft/seed1,fft+continued_fft/seed0,fft+continued_fft/seed1"


def reproduce(tmp_path, *arguments):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--fast", "--results", str(tmp_path / "results"),
         "--weights", str(tmp_path / "weights"), "--images", str(tmp_path), *arguments],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reproduce")
    result = reproduce(tmp_path, "--arms", ARMS)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, result.stdout


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
    result = reproduce(tmp_path, "--arms", "fft+mft/seed0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fft+mft/seed0..." not in result.stdout


def test_results_from_other_settings_are_refused(run):
    tmp_path, _ = run
    path = tmp_path / "results" / "fft+mft_seed0.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "settings_key": "other"}))
    result = reproduce(tmp_path, "--arms", "fft+mft/seed0")
    assert result.returncode != 0
    assert "measured with other settings or another backend" in result.stderr


def test_unknown_arm_is_refused_before_any_work(tmp_path):
    result = reproduce(tmp_path, "--arms", "fft+magic")
    assert result.returncode != 0
    assert "Unknown arms ['fft+magic']" in result.stderr
    assert not (tmp_path / "results").exists()
