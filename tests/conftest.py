"""The tests' fixtures and the `backend_independent` guard.

The models, data and numpy references the tests share are in `tests/shared/`.
"""

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
