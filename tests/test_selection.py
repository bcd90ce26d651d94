"""Global and N:M selection, against numpy, and through wrap / fit / bake / mask files."""

import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking import selection
from keras_mft.masking.mask import num_removed
from tests.shared.models import fit_a_little
from tests.shared.models import gradient
from tests.shared.models import logits_of
from tests.shared.models import masked
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy
from tests.shared.models import token_batch
from tests.shared.references import numpy_keep_mask
from tests.shared.references import numpy_n_m_mask


def masked_dense(**kwargs):
    layer = keras_mft.MaskedDense(6, **kwargs)
    layer.build((None, 8))
    return layer


# Every kernel has 8 inputs, so every m below divides them.
@pytest.mark.parametrize(
    "equation, kernel_shape, axes",
    [
        ("bm,mn->bn", (8, 6), (0,)),  # Dense
        ("btd,ndh->btnh", (3, 8, 2), (1,)),  # Gemma's query: the input axis in the middle
        ("btnh,nhd->btd", (2, 4, 5), (0, 1)),  # attention output: two input axes
    ],
)
@pytest.mark.parametrize("n, m", [(2, 4), (1, 2), (3, 8)])
def test_n_m_mask_matches_numpy(equation, kernel_shape, axes, n, m):
    class Layer:
        pass

    layer = Layer()
    layer.equation = None if equation == "bm,mn->bn" else equation
    assert selection.input_axes(layer) == axes
    rng = np.random.default_rng(0)
    # Rounded scores, so that many runs hold ties.
    scores = np.round(rng.normal(0, 1, kernel_shape), 1).astype("float32")
    mask = to_numpy(selection.n_m_keep_mask(keras.ops.convert_to_tensor(scores), n, m, axes))
    np.testing.assert_array_equal(mask, numpy_n_m_mask(scores, n, m, axes))
    assert mask.sum() == scores.size * n // m


def test_global_group_matches_numpy():
    model = tiny_llama(num_layers=3)
    keras_mft.wrap(
        model, layers="all", targets=["q", "down"], sparsity=0.3, selection="global", seed=0
    )
    layers = masked(model)
    for name in ("query", "feedforward_output_dense"):
        members = [layer for layer in layers if layer.name == name]
        group = members[0].selection.layers  # in block order
        assert len(group) == 3 and {id(layer) for layer in group} == {
            id(layer) for layer in members
        }
        assert [layer.kernel_path.split("/")[0] for layer in group] == [
            f"transformer_layer_{block}" for block in range(3)
        ]
        # Ties too: round the scores of the first two blocks to a coarse grid.
        for layer in group[:2]:
            layer.scores.assign(np.round(to_numpy(layer.scores), 2))
        columns = group[0].frozen_kernel.shape[-1]
        stacked = np.concatenate([to_numpy(layer.scores).reshape(-1, columns) for layer in group])
        removed = sum(num_removed(int(np.prod(layer.frozen_kernel.shape)), 0.3) for layer in group)
        expected = numpy_keep_mask(stacked, removed)
        actual = np.concatenate(
            [to_numpy(layer.hard_mask()).reshape(-1, columns) for layer in group]
        )
        np.testing.assert_array_equal(actual, expected)
        counts = [layer.num_removed for layer in group]
        assert sum(counts) == removed
        assert len(set(counts)) > 1  # one threshold, not one count per matrix


@pytest.mark.parametrize("mode", ["global", "2:4"])
def test_score_gradient_is_straight_through(mode):
    """dL/ds = sign(s) * W * dL/dW_eff, for kept and removed entries alike."""
    model = tiny_llama(num_layers=2)
    keras_mft.wrap(
        model,
        layers="all",
        targets=["down"],
        selection=mode,
        seed=0,
        **({"sparsity": 0.3} if mode == "global" else {}),
    )
    layer = model.backbone.transformer_layers[1]._feedforward_output_dense
    x = (
        np.random.default_rng(3)
        .standard_normal((3, layer.frozen_kernel.shape[0]))
        .astype("float32")
    )
    upstream = (
        np.random.default_rng(4)
        .standard_normal((3, layer.frozen_kernel.shape[1]))
        .astype("float32")
    )

    def loss():
        return keras.ops.sum(keras.ops.multiply(layer(x), upstream))

    expected = (
        np.sign(to_numpy(layer.scores))
        * to_numpy(layer.frozen_kernel)
        * np.einsum("bm,bn->mn", x, upstream)
    )
    np.testing.assert_allclose(
        to_numpy(gradient(loss, layer.scores)), expected, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["global", "2:4"])
def test_wrap_fit_bake_and_mask_files(mode, tmp_path):
    model = tiny_llama()
    kwargs = {"sparsity": 0.2} if mode == "global" else {}
    keras_mft.wrap(model, layers="0:2", selection=mode, seed=0, **kwargs)
    batch = token_batch(batch_size=4)
    before, after = fit_a_little(model, batch)
    assert any(np.any(before[path] != after[path]) for path in before)
    if mode == "global":  # each projection's group still removes its total
        for alias_layers in {
            id(layer.selection): layer.selection.layers for layer in masked(model)
        }.values():
            removed = sum(int(np.sum(~after[layer.kernel_path])) for layer in alias_layers)
            assert removed == sum(
                num_removed(int(np.prod(layer.frozen_kernel.shape)), 0.2) for layer in alias_layers
            )
    for layer in masked(model):
        mask = after[layer.kernel_path]
        if mode == "2:4":
            assert layer.sparsity == 0.5
            axes = selection.input_axes(layer)
            moved = np.moveaxis(mask, axes, range(len(axes)))
            inputs = int(np.prod(moved.shape[: len(axes)]))
            assert np.all(moved.reshape(inputs // 4, 4, -1).sum(axis=1) == 2)
    path = tmp_path / "masks.mask"
    keras_mft.save_masks(model, path)
    assert {record["selection"] for record in keras_mft.describe_masks(path)} == {mode}

    fresh = tiny_llama()
    keras_mft.load_masks(fresh, path)
    assert {p: m.tolist() for p, m in keras_mft.masks_of(fresh).items()} == {
        p: m.tolist() for p, m in after.items()
    }
    expected = logits_of(model, batch)
    keras_mft.bake(model)
    np.testing.assert_array_equal(logits_of(model, batch), expected)

    other = tiny_llama()
    keras_mft.wrap(other, layers="0:2", seed=0)
    with pytest.raises(ValueError, match="selection"):
        keras_mft.load_masks(other, path)


def test_bad_selections_are_refused():
    model = tiny_llama()
    with pytest.raises(ValueError, match="'per_matrix'.*'global'.*'N:M'"):
        keras_mft.wrap(model, selection="4:2")
    with pytest.raises(ValueError, match="fixes the sparsity at 0.5; leave sparsity unset"):
        keras_mft.wrap(model, selection="2:4", sparsity=0.1)
    with pytest.raises(ValueError, match="do not split into runs of 5"):
        keras_mft.wrap(model, selection="2:5")
    assert not masked(model)
    layer = masked_dense(selection="2:4")
    with pytest.raises(ValueError, match="cannot be changed"):
        layer.set_sparsity(0.1)
    keras_mft.wrap(model, selection="2:4", seed=0)
    batch = token_batch()
    scores_before = {path: value.copy() for path, value in keras_mft.scores_of(model).items()}
    with pytest.raises(ValueError, match="cannot ramp N:M masks"):
        model.fit(
            batch,
            batch["token_ids"],
            epochs=1,
            verbose=0,
            callbacks=[keras_mft.MaskFineTuner(ramp_steps=4)],
        )
    for path, value in keras_mft.scores_of(model).items():  # refused before any step
        np.testing.assert_array_equal(value, scores_before[path])
    with pytest.raises(ValueError, match="has 10 inputs, which do not split into runs of 4"):
        layer = keras_mft.MaskedDense(3, selection="1:4")
        layer.build((None, 10))
