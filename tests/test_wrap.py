"""keras_mft.wrap on KerasHub Llama models."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_mft
from keras_mft.masking.wrapping import random_scores
from tests.shared.models import frozen_values
from tests.shared.models import logits_of
from tests.shared.models import masked
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy
from tests.shared.references import llama_logits
from tests.shared.references import numpy_keep_mask

ALL_TARGETS = [
    "query",
    "key",
    "value",
    "attention_output",
    "feedforward_gate_dense",
    "feedforward_intermediate_dense",
    "feedforward_output_dense",
]


def masked_paths(model):
    return [v.path for v in model.trainable_variables]


def scores_paths(blocks, names=ALL_TARGETS):
    paths = []
    for block in blocks:
        for name in names:
            prefix = "self_attention/" if name in ALL_TARGETS[:4] else ""
            paths.append(f"transformer_layer_{block}/{prefix}{name}/scores")
    return paths


def test_trainable_variables_are_exactly_the_scores(model):
    keras_mft.wrap(model, layers="1:3", seed=0)
    assert sorted(masked_paths(model)) == sorted(scores_paths([1, 2]))
    assert all(v.dtype == "float32" for v in model.trainable_variables)


def test_wraps_llama3_and_backbones():
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=32,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    keras_mft.wrap(backbone, layers="all", targets=["q", "down"], seed=0)
    assert sorted(masked_paths(backbone)) == sorted(
        scores_paths([0, 1], ["query", "feedforward_output_dense"])
    )
    causal_lm = keras_hub.models.Llama3CausalLM(
        backbone=keras_hub.models.Llama3Backbone(**backbone.get_config()),
        preprocessor=None,
    )
    keras_mft.wrap(causal_lm, layers=[1], seed=0)
    assert sorted(masked_paths(causal_lm)) == sorted(scores_paths([1]))


def test_refuses_other_models():
    opt = keras_hub.models.OPTBackbone(
        vocabulary_size=32,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    with pytest.raises(
        TypeError, match="cannot wrap a OPTBackbone.*LlamaBackbone.*MistralBackbone.*GPT2Backbone"
    ):
        keras_mft.wrap(opt)
    with pytest.raises(TypeError, match="cannot wrap a Sequential"):
        keras_mft.wrap(keras.Sequential([keras.layers.Dense(2)]))


@pytest.mark.parametrize(
    "layers, expected",
    [
        (None, [0, 1, 2, 3]),
        ("all", [0, 1, 2, 3, 4]),
        ("1:3", [1, 2]),
        ("-2:", [3, 4]),
        (":2", [0, 1]),
        ([4, 0], [0, 4]),
    ],
)
def test_layers(layers, expected):
    model = tiny_llama(num_layers=5, hidden_dim=8)
    keras_mft.wrap(model, layers=layers, targets=["q"], seed=0)
    assert sorted(masked_paths(model)) == sorted(scores_paths(expected, ["query"]))


def test_default_band_is_all_blocks_when_fewer_than_four(model):
    keras_mft.wrap(model, targets=["v"], seed=0)
    assert len(model.trainable_variables) == 3


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"layers": "2:9"}, ValueError, "3 decoder blocks"),
        ({"layers": [3]}, ValueError, "Block 3 does not exist"),
        ({"layers": [-1]}, ValueError, "Block -1 does not exist"),
        ({"layers": "2:1"}, ValueError, "selects no valid blocks"),
        ({"layers": "twenty"}, ValueError, "'start:stop'"),
        ({"layers": "1:x"}, ValueError, "'start:stop'"),
        ({"layers": []}, ValueError, "empty"),
        ({"layers": [1, 1]}, ValueError, "twice"),
        ({"layers": 2}, TypeError, "band like '20:24'"),
        ({"targets": ["q", "qq"]}, ValueError, r"Unknown targets \['qq'\]"),
        ({"targets": ["q", "ffw_gating"]}, ValueError, r"Unknown targets \['ffw_gating'\]"),
        ({"targets": []}, ValueError, "`targets` is empty: name at least one projection"),
        ({"sparsity": 1.0}, ValueError, r"\[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, r"\[0, 1\)"),
        ({"sparsity": float("nan")}, ValueError, r"\[0, 1\)"),
        ({"sparsity": "0.1"}, TypeError, r"\[0, 1\)"),
        ({"mlp_sparsity": -0.5}, ValueError, "mlp_sparsity"),
        ({"score_init": "zeros"}, ValueError, "score_init"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": -1}, ValueError, "non-negative"),
        ({"sparsity": 0.2, "rank": 4}, TypeError, "rank"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(model, kwargs, error, message):
    before = frozen_values(model)
    trainable_before = len(model.trainable_variables)
    with pytest.raises(error, match=message):
        keras_mft.wrap(model, **kwargs)
    assert not masked(model)
    assert len(model.trainable_variables) == trainable_before
    for path, value in frozen_values(model).items():
        np.testing.assert_array_equal(value, before[path])


def test_a_config_and_its_keywords_are_the_same_wrap(model, batch):
    config = keras_mft.MaskConfig(layers="0:2", targets="q,down", sparsity=0.3, seed=4)
    assert config == keras_mft.MaskConfig(layers="0:2", targets=["q", "down"], sparsity=0.3, seed=4)
    assert keras_mft.MaskConfig.from_config(config.get_config()) == config
    other = tiny_llama()
    keras_mft.wrap(model, config)
    keras_mft.wrap(other, layers=[0, 1], targets=["q", "down"], sparsity=0.3, seed=4)
    np.testing.assert_array_equal(logits_of(model, batch), logits_of(other, batch))
    assert {layer.mask_config for layer in masked(model)} == {config}
    with pytest.raises(TypeError, match="not both"):
        keras_mft.wrap(tiny_llama(), config, seed=1)


def test_a_drawn_seed_is_recorded(model):
    keras_mft.wrap(model, layers=[0])
    (config,) = {layer.mask_config for layer in masked(model)}
    again = keras_mft.wrap(tiny_llama(), layers=[0], seed=config.seed)
    for a, b in zip(model.trainable_variables, again.trainable_variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_refuses_an_unbuilt_layer(model):
    query = model.backbone.transformer_layers[1]._self_attention_layer._query_dense
    query.built = False
    before = frozen_values(model)
    with pytest.raises(ValueError, match="'query' is not built"):
        keras_mft.wrap(model, seed=0)
    assert not masked(model)
    for path, value in frozen_values(model).items():
        np.testing.assert_array_equal(value, before[path])


def test_refuses_to_wrap_twice(model):
    keras_mft.wrap(model, seed=0)
    with pytest.raises(ValueError, match="already wrapped.*bake"):
        keras_mft.wrap(model, seed=0)


def test_targets_aliases_and_names_are_the_same(model):
    other, hugging_face = tiny_llama(), tiny_llama()
    keras_mft.wrap(model, targets=["q", "k", "v", "o", "gate", "up", "down"], seed=0)
    keras_mft.wrap(other, targets=ALL_TARGETS, seed=0)
    # The names of Hugging Face checkpoints, as in PEFT's `target_modules`.
    hf_names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    keras_mft.wrap(hugging_face, targets=hf_names, seed=0)
    assert masked_paths(model) == masked_paths(other) == masked_paths(hugging_face)


def test_group_sparsities(model):
    keras_mft.wrap(model, layers=[0], sparsity=0.2, attention_sparsity=0.05, mlp_sparsity=0.5)
    by_name = {layer.name: layer.sparsity for layer in masked(model)}
    assert by_name == {
        "query": 0.05,
        "key": 0.05,
        "value": 0.05,
        "attention_output": 0.05,
        "feedforward_gate_dense": 0.5,
        "feedforward_intermediate_dense": 0.5,
        "feedforward_output_dense": 0.5,
    }


def test_random_scores_are_seeded_numpy_normals(model):
    keras_mft.wrap(model, layers=[0], seed=7)
    for variable in model.trainable_variables:
        values = to_numpy(variable)
        layer = next(layer for layer in masked(model) if layer.scores is variable)
        np.testing.assert_array_equal(values, random_scores(layer, 7))
        assert abs(values.std() - 0.02) < 0.01 and abs(values.mean()) < 0.01
    again = keras_mft.wrap(tiny_llama(), layers=[0], seed=7)
    for a, b in zip(model.trainable_variables, again.trainable_variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_magnitude_scores_give_the_l1_mask(model):
    keras_mft.wrap(model, layers=[2], score_init="magnitude", sparsity=0.3)
    for layer in masked(model):
        kernel = to_numpy(layer.frozen_kernel)
        np.testing.assert_array_equal(to_numpy(layer.scores), np.abs(kernel))
        np.testing.assert_array_equal(
            to_numpy(layer.hard_mask()), numpy_keep_mask(kernel, layer.num_removed)
        )


def test_compiled_with_the_papers_optimizer(model):
    keras_mft.wrap(model, seed=0)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert float(to_numpy(model.optimizer.learning_rate)) == pytest.approx(2e-5)
    assert model.optimizer.weight_decay == 0.0


def test_logits_match_the_numpy_reference(model, batch):
    """Same wrapped model, same scores: every backend agrees with numpy."""
    keras_mft.wrap(model, layers="0:2", targets=["q", "o", "up", "down"], sparsity=0.3, seed=3)
    weights = {}
    for layer in model._flatten_layers():
        for variable in layer.weights:
            if variable.path.endswith("/scores"):
                continue
            value = to_numpy(variable).astype("float64")
            if hasattr(layer, "scores") and variable is layer.frozen_kernel:
                value = value * numpy_keep_mask(to_numpy(layer.scores), layer.num_removed)
            weights[variable.path] = value
    expected = llama_logits(weights, batch["token_ids"], model.backbone.get_config())
    np.testing.assert_allclose(logits_of(model, batch), expected, rtol=1e-4, atol=1e-4)


def fit_to_batch(model, batch, steps):
    labels = np.roll(batch["token_ids"], -1, axis=1)
    return model.fit(batch, labels, batch_size=2, epochs=steps, verbose=0).history["loss"]


def test_fit_lowers_the_loss_changes_the_mask_and_freezes_the_rest(model, batch):
    keras_mft.wrap(model, layers="all", sparsity=0.1, seed=0)
    # A larger step than the paper's 2e-5, so that a few steps show an effect.
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    before = frozen_values(model)
    masks_before = [to_numpy(layer.hard_mask()) for layer in masked(model)]
    history = fit_to_batch(model, batch, steps=15)
    assert history[-1] < history[0] - 0.05
    changed = sum(
        int(np.sum(to_numpy(layer.hard_mask()) != old))
        for layer, old in zip(masked(model), masks_before)
    )
    assert changed > 0
    for layer in masked(model):
        assert int(np.sum(to_numpy(layer.hard_mask()) == 0)) == layer.num_removed
    for path, value in frozen_values(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_fit_in_low_precision(batch, policy):
    model = tiny_llama(dtype=policy)
    keras_mft.wrap(model, layers="all", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    history = fit_to_batch(model, batch, steps=2)
    assert np.all(np.isfinite(history))
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert any(np.any(to_numpy(v) != old) for v, old in zip(model.trainable_variables, before))


def test_save_weights_round_trip(model, batch, tmp_path):
    keras_mft.wrap(model, layers="0:2", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    fit_to_batch(model, batch, steps=2)
    model.save_weights(tmp_path / "wrapped.weights.h5")

    restored = keras_mft.wrap(tiny_llama(seed=5), layers="0:2", seed=1)
    restored.compile(optimizer=keras.optimizers.Adam(0.01))
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(tmp_path / "wrapped.weights.h5")
    for a, b in zip(model.weights, restored.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    np.testing.assert_array_equal(logits_of(restored, batch), logits_of(model, batch))


class StopAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_to_the_same_masks(batch, tmp_path):
    labels = np.roll(batch["token_ids"], -1, axis=1)

    def train(backup_dir, epochs=4, stop_at=None, seed=0):
        model = keras_mft.wrap(tiny_llama(), layers="0:2", seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        callbacks = [keras.callbacks.BackupAndRestore(backup_dir)]
        if stop_at is not None:
            callbacks.append(StopAtEpoch(stop_at))
        model.fit(batch, labels, batch_size=1, epochs=epochs, verbose=0, callbacks=callbacks)
        return model

    reference = train(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="interrupted"):
        train(tmp_path / "resumed", stop_at=2)
    # A new process would start from a freshly wrapped model: other scores.
    resumed = train(tmp_path / "resumed", seed=99)
    for a, b in zip(reference.trainable_variables, resumed.trainable_variables):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6, atol=1e-7)
    for a, b in zip(masked(reference), masked(resumed)):
        np.testing.assert_array_equal(to_numpy(a.hard_mask()), to_numpy(b.hard_mask()))
