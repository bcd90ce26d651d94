"""The protocol's arms and the evaluation helpers."""

import json

import keras_hub
import numpy as np
import pytest

import keras_mft
from keras_mft import evaluation
from keras_mft import protocol
from keras_mft.data.chat_templates import TEMPLATES
from tests.shared.models import masked
from tests.shared.models import to_numpy
from tests.shared.references import numpy_keep_mask

DATA = {
    "prompts": ["What is 2 + 3?", "Name a colour.", "Count to three.", "Hi"],
    "responses": ["2 + 3 = 5.\n#### 5", "Blue.", "one two three", "Hello!"],
}


def tiny_model(tokenizer, num_layers=2):
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


@pytest.fixture
def data(byte_tokenizer):
    return keras_mft.instruction_dataset(byte_tokenizer, DATA, sequence_length=24)


def test_full_fine_tune_trains_every_weight(byte_tokenizer, data):
    model = tiny_model(byte_tokenizer)
    before = [to_numpy(v).copy() for v in model.weights]
    result = protocol.full_fine_tune(
        model, data, epochs=2, batch_size=2, learning_rate=1e-2, verbose=0
    )
    assert len(model.trainable_variables) == len(model.weights)
    assert all(np.any(to_numpy(v) != b) for v, b in zip(model.weights, before))
    assert result["epochs"]["loss"][-1] < result["epochs"]["loss"][0]
    assert result["score_budget"] is None and result["learning_rate"] == 1e-2
    assert isinstance(model.optimizer, keras_mft.PaperAdamW)
    assert model.optimizer.global_clipnorm == 1.0
    with pytest.raises(ValueError, match="this model has none"):
        protocol.full_fine_tune(model, data, score_budget=0.47, verbose=0)


def test_mask_fine_tune_bakes_a_trained_mask(byte_tokenizer, data):
    model = tiny_model(byte_tokenizer)
    result = protocol.mask_fine_tune(
        model,
        data,
        keras_mft.MaskConfig(layers="all", sparsity=0.2, seed=0),
        epochs=2,
        batch_size=2,
        learning_rate=1e-2,
        verbose=0,
    )
    assert result["epochs"]["mask_changed"][-1] > 0
    assert not masked(model)
    kernel = to_numpy(model.backbone.transformer_layers[0]._feedforward_gate_dense.kernel)
    assert int(np.sum(kernel == 0)) == int(0.2 * kernel.size)


def test_mask_fine_tune_spends_the_score_budget(byte_tokenizer, data):
    model = tiny_model(byte_tokenizer)
    for bad, error, message in [
        ({"score_budget": 0.4, "learning_rate": 1e-3}, ValueError, "not both"),
        ({"score_budget": float("nan")}, ValueError, "positive, finite"),
        ({"learning_rate": -1.0}, ValueError, "positive, finite"),
        ({"learning_rate": "2e-5"}, TypeError, "positive number"),
    ]:
        with pytest.raises(error, match=message):
            protocol.mask_fine_tune(model, data, **bad)
    assert not masked(model)
    result = protocol.mask_fine_tune(
        model,
        data,
        keras_mft.MaskConfig(layers="all", seed=0),
        epochs=2,
        batch_size=2,
        verbose=0,
        bake_after=False,
    )
    # The default budget, the paper's math run, is spent to the last step.
    assert result["epochs"]["score_budget"][-1] == pytest.approx(0.47, rel=1e-4)
    assert result["score_budget"] == 0.47
    steps = -(-len(data[1]) // 2) * 2  # batches of 2, 2 epochs
    assert int(to_numpy(model.optimizer.iterations)) == result["updates"] == steps
    # Built before `fit`, so that TensorFlow traces the first step once: for the scores alone.
    assert len(model.optimizer._momentums) == len(keras_mft.scores_of(model))
    with pytest.warns(UserWarning, match="score budget is B = "):
        protocol.mask_fine_tune(
            tiny_model(byte_tokenizer),
            data,
            keras_mft.MaskConfig(layers="all"),
            epochs=1,
            batch_size=2,
            learning_rate=2e-5,
            verbose=0,
        )


@pytest.mark.parametrize("score_init", ["random", "magnitude"])
def test_untrained_masks(byte_tokenizer, score_init):
    model = tiny_model(byte_tokenizer)
    layer = model.backbone.transformer_layers[1]._feedforward_output_dense
    kernel = to_numpy(layer.kernel).copy()
    config = keras_mft.MaskConfig(layers=[1], sparsity=0.25, score_init=score_init, seed=0)
    protocol.untrained_mask(model, config)
    baked = to_numpy(layer.kernel)
    assert int(np.sum(baked == 0)) == int(0.25 * kernel.size)
    if score_init == "magnitude":
        np.testing.assert_array_equal(
            baked, kernel * numpy_keep_mask(kernel, int(0.25 * kernel.size))
        )


def test_lora_fine_tune(byte_tokenizer, data):
    model = tiny_model(byte_tokenizer)
    protocol.lora_fine_tune(
        model, data, rank=4, alpha=2, epochs=1, batch_size=2, learning_rate=1e-2, verbose=0
    )
    names = sorted({v.path.split("/")[-2] + "/" + v.name for v in model.trainable_variables})
    assert names == [
        "query/lora_kernel_a",
        "query/lora_kernel_b",
        "value/lora_kernel_a",
        "value/lora_kernel_b",
    ]
    query = model.backbone.transformer_layers[0]._self_attention_layer._query_dense
    assert query.lora_rank == 4 and query.lora_alpha == 2
    assert np.any(to_numpy(query.lora_kernel_b) != 0)


def test_response_loss_is_the_mean_over_response_tokens(byte_tokenizer, data):
    model = tiny_model(byte_tokenizer)
    x, y, weights = data
    result = evaluation.response_loss(model, data, batch_size=3)
    logits = to_numpy(model(x)).astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]
    expected = np.sum(token_losses * weights) / np.sum(weights)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)
    assert result["tokens"] == int(weights.sum())
    hits = logits.argmax(axis=-1) == y
    assert result["accuracy"] == pytest.approx(np.sum(hits * weights) / np.sum(weights))


def reference_greedy(model, prompt_ids, steps, end_id):
    """Greedy decoding by recomputing the whole sequence at every step.

    The sequence is padded at the end to one length, which the causal model
    never attends to: one shape, so JAX compiles each operation once.
    """
    ids = list(prompt_ids)
    length = len(ids) + steps
    for _ in range(steps):
        token_ids = np.zeros((1, length), "int32")
        token_ids[0, : len(ids)] = ids
        batch = {"token_ids": token_ids, "padding_mask": np.arange(length)[None] < len(ids)}
        next_id = int(np.argmax(to_numpy(model(batch))[0, len(ids) - 1]))
        if next_id == end_id:
            break
        ids.append(next_id)
    return ids[len(prompt_ids) :]


def test_greedy_generate_matches_a_plain_greedy_loop(byte_tokenizer):
    model = tiny_model(byte_tokenizer)
    model.sampler = keras_hub.samplers.TopKSampler(k=5)
    prompts = ["What is 2 + 3?", "Hi"]
    texts = evaluation.greedy_generate(
        model,
        byte_tokenizer,
        prompts,
        template="chatml",  # the answers end at its end of turn, <|im_end|>
        max_new_tokens=6,
        batch_size=2,
    )
    end_id = byte_tokenizer.token_to_id("<|im_end|>")
    all_prompt_ids, template_end_id = evaluation._prompt_ids(
        byte_tokenizer, TEMPLATES["chatml"], prompts, None
    )
    assert template_end_id == end_id
    assert evaluation._detokenize(byte_tokenizer, all_prompt_ids[1]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    for prompt_ids, text in zip(all_prompt_ids, texts):
        expected = reference_greedy(model, prompt_ids, 6, end_id)
        assert text == evaluation._detokenize(byte_tokenizer, expected)
    assert isinstance(model.sampler, keras_hub.samplers.TopKSampler)


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "text, answer",
    [
        ("so 5 apples.\n#### 5", "5"),
        ("#### 1,234", "1234"),
        ("#### -3.5", "-3.5"),
        ("#### 7.0", "7"),
        ("no answer", None),
    ],
)
def test_final_answer(text, answer):
    assert evaluation.final_answer(text) == answer


@pytest.mark.backend_independent
def test_score_answers():
    outputs = ["... #### 5", "#### 12", "I don't know"]
    result = evaluation.score_answers(outputs, ["#### 5", "11", "#### 3"])
    assert result == {"exact_match": 1 / 3, "correct": 1, "total": 3}


@pytest.mark.backend_independent
def test_results_table(tmp_path):
    results = {"base": {"loss": 1.5, "exact_match": 0.25}, "mft": {"loss": 1.25}}
    table = evaluation.results_table(results)
    assert table.splitlines() == [
        "| arm | exact_match | loss |",
        "|---|---|---|",
        "| base | 0.2500 | 1.5000 |",
        "| mft |  | 1.2500 |",
    ]
    evaluation.save_results(results, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == results
