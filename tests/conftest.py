"""The tests' fixtures, the `backend_independent` guard and `one_backend`.

The models, data and numpy references the tests share are in `tests/shared/`.
"""

import keras
import pytest

from tests.shared import models
from tests.shared.backend_guard import check_independent_fixtures
from tests.shared.backend_guard import refuse_backend_use


@pytest.fixture
def model():
    return models.tiny_llama()


@pytest.fixture
def batch():
    return models.token_batch()


@pytest.fixture(scope="session")
def byte_tokenizer():
    return models.byte_tokenizer()


@pytest.fixture
def fast_quantize(monkeypatch):
    """Keras' `quantize` without a full garbage collection per replaced kernel.

    `Layer.__delattr__` calls `gc.collect()` for each variable it drops; in a
    test process that has built many models that is seconds per layer (65 s
    for the tiny Llama on TensorFlow). What is quantized does not change.
    """
    monkeypatch.setattr("gc.collect", lambda generation=2: 0)


@pytest.fixture(autouse=True)
def backend_independent_guard(request):
    """Fails a test marked `backend_independent` that touches a backend."""
    if request.node.get_closest_marker("backend_independent") is None:
        yield
        return
    with refuse_backend_use() as used:
        yield
    assert not used, f"{request.node.nodeid} is marked backend_independent but {used[0]}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("backend_independent") is not None:
            check_independent_fixtures(item)
    # A test marked `one_backend(name)` runs with that backend only.
    elsewhere = [
        item
        for item in items
        if (mark := item.get_closest_marker("one_backend")) is not None
        and mark.args[0] != keras.backend.backend()
    ]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]
