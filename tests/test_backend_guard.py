"""The check behind the `backend_independent` marker (tests/backend_guard.py)."""

import subprocess
import sys
import types

import keras
import keras_hub
import numpy as np
import pytest

from tests.shared.backend_guard import NO_BACKEND
from tests.shared.backend_guard import check_independent_fixtures
from tests.shared.backend_guard import refuse_backend_use

USES = {
    "built a Keras layer or model": lambda: keras.layers.Dense(2),
    "created a Keras variable": lambda: keras.Variable(np.ones(2)),
    "called keras.ops.add": lambda: keras.ops.add(1.0, 2.0),
    "asked for the backend": lambda: keras.backend.backend(),
    # KerasHub's tokenizers are layers.
    "built a Keras layer or model ": lambda: keras_hub.tokenizers.BytePairTokenizer(
        vocabulary={"a": 0, "b": 1, "ab": 2}, merges=["a b"]
    ),
}


@pytest.mark.parametrize("what", USES)
def test_every_use_of_a_backend_is_refused_and_recorded(what):
    with refuse_backend_use() as used:
        with pytest.raises(AssertionError, match=f"a backend_independent test {what.strip()}"):
            USES[what]()
    assert used == [what.strip()]
    USES[what]()  # allowed again afterwards


def test_a_child_process_cannot_inherit_the_backend():
    with refuse_backend_use():
        child = subprocess.run(
            [sys.executable, "-c", "import keras"], capture_output=True, text=True, timeout=300
        )
    assert child.returncode != 0 and NO_BACKEND in child.stderr


def test_only_fixtures_that_build_nothing_are_allowed():
    def item(*fixtures, params=None):
        test = types.SimpleNamespace(nodeid="test_x", fixturenames=list(fixtures))
        if params is not None:
            test.callspec = types.SimpleNamespace(params=params)
        return test

    check_independent_fixtures(item("tmp_path", "monkeypatch", "shape", params={"shape": 3}))
    with pytest.raises(pytest.UsageError, match=r"uses the fixtures \['model'\]"):
        check_independent_fixtures(item("tmp_path", "model"))
