"""Every Python code block of the documentation site runs as written.

The blocks of a page run in order in one namespace, as a reader would run
them, in an empty directory, in one backend's session (`PAGES`). The examples in the docstrings that docs/api.md
renders run one by one, after the imports that KerasHub-style docstrings assume. The
guides' pages are generated from examples/, which test_examples.py runs.
"""

import importlib
import inspect
import pathlib
import re

import keras
import keras_hub
import numpy as np
import pytest

import keras_mft

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text):
    return PYTHON_BLOCK.findall(text)


def pages_with_code():
    pages = sorted((ROOT / "docs").glob("*.md"))
    return [page.name for page in pages if python_blocks(page.read_text(encoding="utf-8"))]


def documented_objects():
    """What docs/api.md renders: each `::: dotted.path`, and a module's functions."""
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    objects = {}
    for path in re.findall(r"^::: ([\w.]+)$", api, re.M):
        module_path, _, name = path.rpartition(".")
        try:
            value = importlib.import_module(path)
        except ModuleNotFoundError:
            value = getattr(importlib.import_module(module_path), name)
        objects[path] = value
        if inspect.ismodule(value):
            for member, function in inspect.getmembers(value, inspect.isfunction):
                if not member.startswith("_") and function.__module__ == value.__name__:
                    objects[f"{path}.{member}"] = function
    return objects


# The session (backend) each page's code runs in, as each guide runs in one:
# what the pages call is tested on every backend by the other tests.
PAGES = {"faq.md": "jax", "guide.md": "torch", "index.md": "tensorflow"}
# Docstring examples run on every backend, but for those that load the
# embedded model (about 25 s each), which test_smollm2.py loads on each.
HEAVY_EXAMPLES = {"keras_mft.embedded.smollm2.smollm2_135m_instruct-0": "torch"}


def docstring_examples():
    params = []
    for name, value in documented_objects().items():
        for index, block in enumerate(python_blocks(inspect.getdoc(value) or "")):
            key = f"{name}-{index}"
            marks = [pytest.mark.one_backend(HEAVY_EXAMPLES[key])] if key in HEAVY_EXAMPLES else []
            params.append(pytest.param(block, id=key, marks=marks))
    return params


@pytest.mark.backend_independent
def test_the_docs_have_code_to_run():
    assert sorted(PAGES) == pages_with_code()  # a new page with code gets a backend here
    assert len(documented_objects()) > 20
    assert len(docstring_examples()) >= 5


@pytest.mark.parametrize(
    "page", [pytest.param(page, marks=pytest.mark.one_backend(PAGES[page])) for page in PAGES]
)
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    for index, block in enumerate(python_blocks(text)):
        exec(compile(block, f"{page}, block {index + 1}", "exec"), namespace)


@pytest.mark.parametrize("block", docstring_examples())
def test_docstring_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"keras": keras, "keras_hub": keras_hub, "np": np, "keras_mft": keras_mft}
    exec(compile(block, "docstring example", "exec"), namespace)
