"""The benchmark scripts run end to end at tiny sizes and write what they promise.

No timing is asserted: these tests check that the scripts work and that their
results have the shape the report reads.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking.wrapping import masked_layers_of
from tests.shared.models import tiny_llama
from tests.shared.scripts import BENCHMARKS
from tests.shared.scripts import import_benchmark
from tests.shared.scripts import run_benchmark

BACKEND = keras.backend.backend()
CHILD_PROCESS_BACKEND = "torch"
# The scripts' module fixture is built once, on one worker.
pytestmark = pytest.mark.xdist_group("benchmarks")
# The tiny model's band: 2 blocks of q, o (64x64), k, v (64x32), gate, up, down (64x128).
TINY_BAND_KERNELS = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every benchmark but the allocator's at tiny sizes on this backend, and the report."""
    directory = tmp_path_factory.mktemp("benchmarks")
    tiny = ["--model", "tiny"]
    outputs = {
        "selection": run_benchmark(
            "selection",
            "--sizes",
            "64x48,32x8",
            "--repeats",
            "1",
            "--json",
            str(directory / f"selection_{BACKEND}.json"),
        ),
        "train_step": run_benchmark(
            "train_step",
            *tiny,
            "--warmup",
            "1",
            "--steps",
            "1",
            "--json",
            str(directory / f"train_step_llama7b_slice_{BACKEND}.json"),
        ),
        "train_step_fixed": run_benchmark(
            "train_step",
            *tiny,
            "--arms",
            "fft_band,mft_fixed,mft",
            "--interleave",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--json",
            str(directory / f"train_step_llama7b_slice_fixed_{BACKEND}.json"),
        ),
        "inference": run_benchmark(
            "inference",
            *tiny,
            "--repeats",
            "1",
            "--prompt-length",
            "4",
            "--new-tokens",
            "3",
            "--json",
            str(directory / f"inference_{BACKEND}.json"),
        ),
        "harness": run_benchmark(
            "harness",
            "--model",
            "tiny",
            "--band",
            "0:2",
            "--questions",
            "2",
            "--repeats",
            "1",
            "--json",
            str(directory / f"harness_{BACKEND}.json"),
        ),
    }
    # The scripts that run each arm in a child process run the same code on
    # every backend (the children's train steps are tested on each): one
    # backend's session runs them.
    if BACKEND == CHILD_PROCESS_BACKEND:
        outputs["train_step_long"] = run_benchmark(
            "train_step",
            *tiny,
            "--arms",
            "fft_band,mft",
            "--sequence-length",
            "32",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--process-per-arm",
            "--json",
            str(directory / f"train_step_llama7b_slice_long_{BACKEND}.json"),
        )
        outputs["memory"] = run_benchmark(
            "memory", *tiny, "--steps", "1", "--json", str(directory / f"memory_{BACKEND}.json")
        )
    outputs["report"] = run_benchmark(
        "report", "--results", str(directory), "--images", str(directory)
    )
    return directory, outputs


@pytest.mark.backend_independent
def test_the_scripts_run_on_one_worker(request):
    # Otherwise every worker builds `results`. pytest-xdist marks the group in
    # the node id (and pytest 9.2 drops that mark, see pyproject.toml).
    if request.config.getoption("loadgroup", False):  # pytest-xdist with --dist=loadgroup
        assert request.node.nodeid.endswith("@benchmarks")


def read(directory, name):
    return json.loads((directory / f"{name}_{BACKEND}.json").read_text())


def test_selection_benchmark(results):
    directory, outputs = results
    rows = read(directory, "selection")
    assert [row["shape"] for row in rows] == [[64, 48], [32, 8]]
    methods = ("keras-mft", "radix", "sort", "top_k")
    assert all(row[method] > 0 for row in rows for method in methods)
    # One AdamW step leaves the 64x48 threshold in its high bin: the timed
    # selection is the one a train step usually runs.
    assert rows[0]["same_bin"] and all(row["same_mask"] for row in rows)
    assert "| radix / incremental | sort / keras-mft |" in outputs["selection"]


# On PyTorch only, the one backend with all three settings: the child processes
# it times run `train_step.py`, which the tests above run on every backend.
@pytest.mark.one_backend("torch")
def test_allocator_benchmark_times_each_arm_with_each_setting(tmp_path):
    output = run_benchmark(
        "allocator",
        "--model",
        "tiny",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--json",
        str(tmp_path / "allocator_torch.json"),
    )
    rows = read(tmp_path, "allocator")
    assert [row["arm"] for row in rows] == ["mft", "fft_band"]
    settings = ["default", "keep freed memory", "huge pages"]
    for row in rows:
        assert [key for key in row if key not in ("backend", "model", "arm")] == settings
        for setting in settings:
            assert row[setting]["seconds"] > 0
            assert row[setting]["peak_bytes"] > 100 * 2**20  # at least the framework
    assert "MFT / FFT of the band, keep freed memory:" in output


def test_train_step_benchmark_times_every_arm(results):
    directory, outputs = results
    rows = read(directory, "train_step_llama7b_slice")
    assert [row["arm"] for row in rows] == ["mft", "fft_band", "lora8", "lora64", "fft"]
    by_arm = {row["arm"]: row for row in rows}
    assert by_arm["fft_band"]["vs_fft_band"] == 1.0
    assert by_arm["fft"]["vs_fft"] == 1.0
    # MFT trains one score per masked kernel entry; FFT of the band also
    # trains the band's norms; LoRA far fewer weights.
    assert by_arm["mft"]["trainable"] == TINY_BAND_KERNELS
    assert by_arm["fft_band"]["trainable"] == TINY_BAND_KERNELS + 2 * 2 * 64
    assert by_arm["lora8"]["trainable"] < by_arm["lora64"]["trainable"]
    assert "MFT / FFT of the band =" in outputs["train_step"]
    assert all(row["tokens"] == 2 * 16 for row in rows)  # the tiny model's batch


@pytest.mark.one_backend(CHILD_PROCESS_BACKEND)
def test_train_step_benchmark_takes_longer_sequences_in_a_process_per_arm(results):
    directory, outputs = results
    rows = read(directory, "train_step_llama7b_slice_long")
    assert [(row["arm"], row["tokens"]) for row in rows] == [("fft_band", 64), ("mft", 64)]
    fft_band, mft = rows  # timed in two child processes, compared here
    assert mft["vs_fft_band"] == mft["seconds"] / fft_band["seconds"]
    assert "batch 2 x 32 tokens" in outputs["train_step_long"]
    assert "a process per arm" in outputs["train_step_long"]
    assert (
        f"train step llama7b_slice, 64 tokens, {BACKEND}: MFT / FFT band <= 1.05"
        in outputs["report"]
    )


def test_train_step_benchmark_times_mft_with_its_masks_held_fixed(results):
    directory, outputs = results
    rows = read(directory, "train_step_llama7b_slice_fixed")
    assert [row["arm"] for row in rows] == ["fft_band", "mft_fixed", "mft"]
    fft_band, mft_fixed, mft = rows
    assert mft_fixed["trainable"] == mft["trainable"] == TINY_BAND_KERNELS
    assert mft_fixed["vs_fft_band"] == mft_fixed["seconds"] / fft_band["seconds"]
    assert "interleaved" in outputs["train_step_fixed"]
    assert (
        f"train step llama7b_slice {BACKEND}, masks held fixed (no selection): "
        "MFT / FFT band <= 1.05" in outputs["report"]
    )


def test_interleaved_timing_runs_one_step_of_each_arm_per_round(monkeypatch):
    train_step = import_benchmark("train_step")
    calls = []

    def prepared_step(model_name, arm, sequence_length):
        return arm, lambda: calls.append(arm)

    monkeypatch.setattr(train_step, "prepared_step", prepared_step)
    monkeypatch.setattr(train_step.arms, "trainable_count", lambda model: 0)
    rows = train_step.time_interleaved(
        "tiny", ["fft_band", "mft"], warmup=1, steps=2, sequence_length=16
    )
    assert calls == ["fft_band", "mft"] * 3
    assert [row["arm"] for row in rows] == ["fft_band", "mft"]


@pytest.mark.backend_independent
def test_train_step_benchmark_refuses_to_interleave_a_process_per_arm(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_benchmark("train_step", "--model", "tiny", "--interleave", "--process-per-arm")
    assert exit_.value.code == 2
    assert "--interleave times the arms in one process" in capsys.readouterr().err


@pytest.mark.one_backend(CHILD_PROCESS_BACKEND)
def test_memory_benchmark_reports_bytes_per_masked_weight(results):
    directory, _ = results
    row = read(directory, "memory")
    assert row["masked_weights"] == TINY_BAND_KERNELS
    assert set(row["raw"]) == {"norms", "mft", "fft_band"}
    assert all(arm["extra_peak_bytes"] > 0 for arm in row["raw"].values())


def test_inference_benchmark_compares_three_variants(results):
    directory, _ = results
    rows = read(directory, "inference")
    assert [(row["job"], row["variant"]) for row in rows] == [
        (job, variant)
        for job in ("logits", "generation")
        for variant in ("original", "wrapped", "baked")
    ]
    assert all(row["vs_original"] == 1.0 for row in rows if row["variant"] == "original")


def test_harness_benchmark_scores_the_same_requests_with_each_model(results):
    directory, _ = results
    rows = read(directory, "harness")
    assert [row["model"] for row in rows] == ["keras-mft", "keras-mft, masks", "hf"]
    requests = len(import_benchmark("harness").arc_easy_requests(2))
    assert requests >= 6 and all(row["requests"] == requests for row in rows)
    assert rows[2]["vs_hf"] == 1.0 and all(row["per_second"] > 0 for row in rows)


def test_report_checks_targets_and_draws_plots(results):
    directory, outputs = results
    drawn = ("train_step", "selection", "inference")
    drawn += ("memory",) if BACKEND == CHILD_PROCESS_BACKEND else ()
    for name in drawn:
        assert (directory / f"bench_{name}.png").stat().st_size > 0
    assert f"train step llama7b_slice {BACKEND}: MFT / FFT band <= 1.05" in outputs["report"]
    assert f"selection {BACKEND}: share of a 7B-slice MFT step < 0.05" in outputs["report"]
    assert f"lm-eval {BACKEND}: keras-mft / hf requests per second >= 1" in outputs["report"]


@pytest.mark.parametrize("arm", ["mft", "mft_fixed"])
def test_mft_fixed_arm_holds_its_first_masks_and_still_trains_the_scores(arm):
    arms = import_benchmark("arms")
    model = arms.prepare(arms.build_model("tiny"), arm, arms.MODELS["tiny"]["band"])
    first_masks = keras_mft.masks_of(model)
    layers = masked_layers_of(model)
    rng = np.random.default_rng(1)
    for layer in layers:
        layer.scores.assign(rng.normal(size=layer.scores.shape).astype("float32"))
    new_scores = keras_mft.scores_of(model)
    masks = keras_mft.masks_of(model)
    changed = [not np.array_equal(masks[path], first_masks[path]) for path in masks]
    # MFT selects from the new scores; the fixed arm keeps its first masks,
    # and the masked kernels follow them.
    assert all(changed) if arm == "mft" else not any(changed)
    for layer in layers:
        kernel = keras.ops.convert_to_numpy(layer._kernel)
        mask = masks[layer.kernel_path]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel), kernel * mask)
    x, y, sample_weight = arms.batch(256, 2, 16)
    model.train_on_batch(x, y, sample_weight=sample_weight)
    scores = keras_mft.scores_of(model)
    assert all(not np.array_equal(scores[path], new_scores[path]) for path in scores)


@pytest.mark.backend_independent
def test_report_adds_the_arms_timed_in_a_second_process(tmp_path):
    report = import_benchmark("report")

    def rows(*arm_seconds):
        return [{"arm": arm, "seconds": seconds} for arm, seconds in arm_seconds]

    (tmp_path / f"train_step_llama7b_slice_{BACKEND}.json").write_text(
        json.dumps(rows(("fft", 3.0), ("mft", 2.0), ("fft_band", 1.0)))
    )
    (tmp_path / f"train_step_llama7b_slice_lora_{BACKEND}.json").write_text(
        json.dumps(rows(("fft_band", 1.5), ("lora8", 0.5)))
    )
    merged = report.train_step_runs(tmp_path, "llama7b_slice")[BACKEND]
    assert merged == rows(("fft", 3.0), ("mft", 2.0), ("fft_band", 1.0), ("lora8", 0.5))


# A property of the two routes' arithmetic, run on PyTorch only (the fastest
# here): `wrap`, `bake` and `quantize` are tested on every backend elsewhere.
@pytest.mark.one_backend("torch")
def test_int8_routes_agree_only_where_no_channel_loses_its_largest_weight(batch, fast_quantize):
    int8 = import_benchmark("int8")
    for score_init in ("random", "magnitude"):
        _, bake_first, mask_after, differ, kernels = int8.routes(
            tiny_llama, "0:2", score_init, batch
        )
        assert len(differ) == kernels == 14
        changed = sum(d for d, _ in differ)
        if score_init == "magnitude":  # never removes a channel's largest |weight|
            assert changed == 0
            np.testing.assert_array_equal(bake_first, mask_after)
        else:
            assert changed > 0
            assert np.max(np.abs(bake_first - mask_after)) > 0


def test_threshold_moves_reads_every_matrix_after_every_step(tmp_path):
    output = run_benchmark(
        "threshold_moves", "--fast", "--steps", "2", "--json", str(tmp_path / "moves.json")
    )
    thresholds = np.array(json.loads((tmp_path / "moves.json").read_text())["thresholds"])
    assert thresholds.shape == (3, 28)  # before and after 2 steps; 4 blocks x 7 kernels
    assert (thresholds > 0).all()
    assert "| high bins moved | matrix-steps | share |" in output


@pytest.mark.one_backend("jax")  # it runs JAX and PyTorch itself, each in its own processes
def test_gpu_check_runs_at_tiny_size_without_tensorflow(tmp_path):
    # The GPU machine has no TensorFlow: here, importing it fails as there.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorflow'] = sys.modules['tensorflow_text'] = None\n"
    )
    script = BENCHMARKS / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(BENCHMARKS.parent)])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for backend in ("jax", "torch"):
        assert f"| {backend} | selection 64x48: sort / keras-mft |" in result.stdout
        for tokens in (32, 128):
            label = f"| {backend} | train step, {tokens} tokens: MFT / FFT of the band |"
            assert label in result.stdout
        rows = json.loads((tmp_path / f"gpu_train_step_llama7b_slice_{backend}.json").read_text())
        assert [(row["arm"], row["dtype"]) for row in rows] == [
            ("fft_band", "bfloat16"),
            ("mft", "bfloat16"),
        ]


# Two child processes, as the memory benchmark's: on one backend's session.
@pytest.mark.one_backend(CHILD_PROCESS_BACKEND)
def test_checkpointing_benchmark_measures_both_arms(tmp_path):
    output = run_benchmark(
        "checkpointing",
        "--model",
        "tiny",
        "--sequence-length",
        "16",
        "--steps",
        "1",
        "--json",
        str(tmp_path / "checkpointing.json"),
    )
    rows = json.loads((tmp_path / "checkpointing.json").read_text())
    assert [row["arm"] for row in rows] == ["mft", "mft_checkpointed"]
    assert all(row["peak_bytes"] > 100 * 2**20 and row["seconds"] > 0 for row in rows)
    assert "With checkpointing:" in output and "x the step time" in output
