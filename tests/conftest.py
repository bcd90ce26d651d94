"""Small random Llama models shared by the tests, and the `backend_independent` guard.

Weights come from numpy with a fixed seed, so a model is the same on every
backend and its outputs can be compared with the numpy reference.
"""

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

import keras_mft
from tests.backend_guard import check_independent_fixtures
from tests.backend_guard import refuse_backend_use

VOCABULARY_SIZE = 64


def tiny_llama(num_layers=3, hidden_dim=32, seed=0, dtype=None, backbone_only=False):
    """A random `LlamaCausalLM` (4 query heads, 2 key/value heads)."""
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=num_layers,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=48,
        dtype=dtype,
    )
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        if variable.path.endswith("scale"):
            value = 1.0 + 0.1 * rng.standard_normal(variable.shape)
        else:
            value = 0.2 * rng.standard_normal(variable.shape)
        variable.assign(value.astype("float32"))
    if backbone_only:
        return backbone
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def token_batch(batch_size=2, sequence_length=8, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, VOCABULARY_SIZE, (batch_size, sequence_length)),
        "padding_mask": np.ones((batch_size, sequence_length), bool),
    }


def fit_a_little(model, batch):
    """Two epochs of Adam(0.01) on `batch`; returns the masks before and after."""
    before = keras_mft.masks_of(model)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(batch, batch["token_ids"], batch_size=2, epochs=2, verbose=0)
    return before, keras_mft.masks_of(model)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def logits_of(model, batch):
    return to_numpy(keras.ops.cast(model(batch), "float32"))


def frozen_values(model):
    """{path: numpy value} of every variable but the scores and the last thresholds."""
    return {
        v.path: to_numpy(v).copy()
        for v in model.weights
        if not v.path.endswith(("/scores", "/last_threshold"))
    }


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def batch():
    return token_batch()


SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
]


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A byte-level BPE tokenizer that can encode any text, with chat tokens."""
    vocabulary = {token: i for i, token in enumerate(SPECIAL_TOKENS + bytes_to_unicode()[1])}
    merges = ["Ġ t", "h e"]
    for merge in merges:
        vocabulary[merge.replace(" ", "")] = len(vocabulary)
    return keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)


@pytest.fixture(autouse=True)
def backend_independent_guard(request):
    """Fails a test marked `backend_independent` that touches a backend."""
    if request.node.get_closest_marker("backend_independent") is None:
        yield
        return
    with refuse_backend_use() as used:
        yield
    assert not used, f"{request.node.nodeid} is marked backend_independent but {used[0]}"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("backend_independent") is not None:
            check_independent_fixtures(item)
