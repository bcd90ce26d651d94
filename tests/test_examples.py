"""The guides in examples/ and the README's code run as written.

The guides are written for the embedded SmolLM2-135M-Instruct and take
minutes each; their smoke runs here take seconds because they are shrunk from
outside. `run_guide` puts `tests/guides/` first on `PYTHONPATH`, so the
guide's process (and any process it starts) imports
`tests/guides/sitecustomize.py` at start-up. Once the guide imports
`keras_mft`, that module replaces two of its functions:
`keras_mft.smollm2_135m_instruct()` returns a tiny random Llama with SmolLM2's
preprocessor and 12 blocks, and `keras_mft.gsm8k(split)` the first 8
training or 4 held-out problems, so that each guide trains for a step or two;
it says so on stderr, and `run_guide` checks that it did. Nothing else
changes: the guides' code, sizes and settings run as written.

A guide is documentation, run once: each with one backend (`GUIDES`), so
that every backend runs some of them. What they call is tested on every
backend by the other tests, and the backends guide runs itself on all three.
"""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import keras
import nbclient
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHRINK = ROOT / "tests" / "guides"  # holds sitecustomize.py


def guide_environment(backend=None, shrink=False):
    """The environment of a guide's process: its backend, and with `shrink`,
    tests/guides/ first on `PYTHONPATH`."""
    env = {**os.environ, "KERAS_BACKEND": backend or keras.backend.backend()}
    if shrink:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHRINK), env.get("PYTHONPATH")]))
    return env


def check_shrunk(stderr):
    # sitecustomize.py says so on stderr: the guide did not run full size.
    assert "keras_mft shrunk for a smoke test" in stderr, stderr[-3000:]


def run_python(args, cwd, backend=None, shrink=False):
    env = guide_environment(backend, shrink)
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if shrink:
        check_shrunk(result.stderr)
    return result.stdout


def run_guide(name, tmp_path, backend=None):
    """Runs examples/`name` in `tmp_path`, shrunk by tests/guides/sitecustomize.py."""
    return run_python([str(ROOT / "examples" / name)], tmp_path, backend, shrink=True)


def run_notebook(name, tmp_path):
    """Executes the notebook that the site makes of examples/`name`, as `run_guide` runs it."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        guides = importlib.import_module("guides")  # docs/guides.py
    finally:
        sys.path.remove(str(ROOT / "docs"))
    source = (ROOT / "examples" / name).read_text(encoding="utf-8")
    notebook = guides.guide_to_notebook(source, name.removesuffix(".py"))
    nbclient.NotebookClient(
        notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    ).execute(env=guide_environment(shrink=True))  # the kernel's environment
    streams = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    text = {
        name: "".join(out.get("text", "") for out in streams if out.get("name") == name)
        for name in ("stdout", "stderr")
    }
    check_shrunk(text["stderr"])
    return text["stdout"]


def check_quickstart(output, tmp_path):
    assert "with the learned 10% masks" in output
    assert (tmp_path / "quickstart.mask").is_file()
    assert (tmp_path / "quickstart_preset" / "model.weights.h5").is_file()


def check_straight_through(output, tmp_path):
    # The guide asserts that Keras' masks, outputs and gradients equal numpy's.
    assert "dL/ds (Keras)" in output
    assert output.count("  removed [") == 15


def check_masks_as_adapters(output, tmp_path):
    for line in (
        "applied vs learned",
        "baked vs learned",
        "reloaded preset vs learned",
        "math vs learned",
        "answer vs its mask baked alone",
        "no mask vs base model",
        "baked answer vs its mask",
    ):
        assert f"{line}, largest logit difference: 0.0\n" in output
    assert "loaded masks: ['answer', 'math']" in output
    gap = re.search(r"transformers vs learned, largest logit difference: (\S+)", output)
    assert float(gap.group(1)) < 1e-4
    assert "transformers' tokens of '2023': [34, 32, 34, 35]" in output
    assert "both masks in use; changed logits: True" in output
    assert "refused: transformer_layer_4/self_attention/query/kernel" in output
    assert (tmp_path / "math.mask").is_file()


def check_band_and_ratio(output, tmp_path):
    assert output.count("learned mask") == 5  # bands 0:4, 4:8, 8:12; ratios 0.05, 0.2
    for image in ("band_sweep.png", "ratio_sweep.png", "mask_change.png", "scores.png"):
        assert (tmp_path / image).stat().st_size > 1000


def check_paper_protocol(output, tmp_path):
    for arm in (
        "| FFT + MFT |",
        "| FFT + continued FFT |",
        "| FFT + L1 mask |",
        "| LoRA from base |",
    ):
        assert arm in output
    assert (tmp_path / "protocol_results.json").is_file()


# The backend each guide runs with, and what its output must show.
# The quickstart runs as the notebook the site offers: the same code, in a kernel.
NOTEBOOKS = {"quickstart.py"}
GUIDES = {
    "quickstart.py": ("tensorflow", check_quickstart),
    "masks_as_adapters.py": ("tensorflow", check_masks_as_adapters),
    "paper_protocol.py": ("torch", check_paper_protocol),
    "band_and_ratio.py": ("torch", check_band_and_ratio),
    "straight_through.py": ("jax", check_straight_through),
}


@pytest.mark.parametrize(
    "guide",
    [
        pytest.param(name, marks=pytest.mark.one_backend(backend))
        for name, (backend, _) in GUIDES.items()
    ],
)
def test_guide(guide, tmp_path):
    if guide in NOTEBOOKS:
        output = run_notebook(guide, tmp_path)
    else:
        output = run_guide(guide, tmp_path)
    GUIDES[guide][1](output, tmp_path)


@pytest.mark.backend_independent
def test_backends_agree(tmp_path):
    # The guide runs itself on every backend: once is enough.
    output = run_guide("backends.py", tmp_path, backend="jax")
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \| (\d+) of ([\d,]+) \|$", output, re.M)
    assert sorted(row[0] for row in rows) == ["jax", "tensorflow", "torch"]
    initial_losses = {float(row[1]) for row in rows}
    assert max(initial_losses) - min(initial_losses) < 1e-3
    for _, _, _, differ, total in rows:
        assert int(differ) <= 0.001 * int(total.replace(",", ""))


@pytest.mark.backend_independent
def test_distributed(tmp_path):
    # The guide always runs on JAX with 8 virtual CPU devices, and asserts
    # that both parallel runs learn the masks of the single-device run.
    output = run_guide("distributed.py", tmp_path, backend="jax")
    assert "DataParallel: 0 of 73,728 mask entries differ" in output
    assert "ModelParallel: 0 of 73,728 mask entries differ" in output
    assert re.search(r"feedforward_gate_dense/scores +P\('batch', 'model'\)", output)


def test_readme_usage_block(tmp_path):
    readme = (ROOT / "README.md").read_text()
    usage = readme.split("## Use\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    code = code.replace('os.environ["KERAS_BACKEND"] = "jax"', "")
    output = run_python(["-c", code], tmp_path)
    assert "transformer_layer_0/self_attention/query/scores" in output
    assert (tmp_path / "band.mask").is_file()
