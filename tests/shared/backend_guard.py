"""What a test marked `backend_independent` may not do.

Such a test runs with one backend only (noxfile.py), so its result must not
depend on the Keras backend: it may not build a layer, model or variable
(tokenizers are layers too), call `keras.ops`, ask which backend runs, or
start a process that inherits the session's backend.
"""

import contextlib

import keras
import pytest
from keras.src.backend.common.variables import Variable
from keras.src.ops.operation import Operation

# The only fixtures such a test may use: none of them builds anything.
INDEPENDENT_FIXTURES = {"request", "tmp_path", "tmp_path_factory", "monkeypatch", "capsys"}

# A child process started without its own `KERAS_BACKEND` fails to import Keras.
NO_BACKEND = "none-in-a-backend-independent-test"


@contextlib.contextmanager
def refuse_backend_use():
    """Within it, every use of a backend raises; yields the list of uses."""
    used = []

    def refuse(what):
        def refused(*args, **kwargs):
            used.append(what)
            raise AssertionError(f"a backend_independent test {what}")

        return refused

    with pytest.MonkeyPatch.context() as patch:
        # Every layer and model is an `Operation`.
        patch.setattr(Operation, "__init__", refuse("built a Keras layer or model"))
        patch.setattr(Variable, "__init__", refuse("created a Keras variable"))
        patch.setattr(keras.backend, "backend", refuse("asked for the backend"))
        for name in dir(keras.ops):
            if not name.startswith("_") and callable(getattr(keras.ops, name)):
                patch.setattr(keras.ops, name, refuse(f"called keras.ops.{name}"))
        patch.setenv("KERAS_BACKEND", NO_BACKEND)
        yield used


def check_independent_fixtures(item):
    """Refuses a `backend_independent` test that uses other fixtures.

    Fixtures of a wider scope are built before the test and its guard start,
    so only fixtures that build nothing are allowed.
    """
    parameters = set(item.callspec.params) if hasattr(item, "callspec") else set()
    others = set(item.fixturenames) - parameters - INDEPENDENT_FIXTURES
    others.discard("backend_independent_guard")
    if others:
        raise pytest.UsageError(
            f"{item.nodeid} is marked backend_independent but uses the fixtures "
            f"{sorted(others)}, which may build Keras objects: remove the marker "
            "or the fixtures."
        )
