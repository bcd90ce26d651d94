"""The guide in examples/ and the README's code run as written."""

import os
import pathlib
import re
import subprocess
import sys

import keras

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_python(args, cwd):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart(tmp_path):
    output = run_python([str(ROOT / "examples" / "quickstart.py")], tmp_path)
    assert "with the learned 10% masks" in output
    assert (tmp_path / "quickstart.mask").is_file()
    assert (tmp_path / "quickstart_preset" / "model.weights.h5").is_file()


def test_readme_usage_block(tmp_path):
    readme = (ROOT / "README.md").read_text()
    usage = readme.split("## Use\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    code = code.replace('os.environ["KERAS_BACKEND"] = "jax"', "")
    output = run_python(["-c", code], tmp_path)
    assert "transformer_layer_0/self_attention/query/scores" in output
    assert (tmp_path / "band.mask").is_file()


def test_paper_protocol_in_fast_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_MFT_FAST", "1")
    output = run_python([str(ROOT / "examples" / "paper_protocol.py")], tmp_path)
    for arm in ("| FFT + MFT |", "| FFT + continued FFT |", "| FFT + L1 mask |", "| LoRA from base |"):
        assert arm in output
    assert (tmp_path / "protocol_results.json").is_file()
