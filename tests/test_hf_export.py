"""keras_mft.export_to_transformers: a baked model that transformers loads alone."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import keras_mft
from keras_mft.embedded.smollm2 import tiny_smollm2
from tests.shared.models import logits_of

DATA = pathlib.Path(__file__).parent / "data"
TOKEN_CASES = json.loads((DATA / "smollm2_tokens.json").read_text(encoding="utf-8"))["cases"]

# Run by a Python that refuses to import keras_mft or keras: what transformers
# reads must stand on its own.
TRANSFORMERS_SIDE = """
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_mft", "keras", "keras_hub"):
            raise ImportError(f"{name} must not be needed")

sys.meta_path.insert(0, Refuse())
import torch
import transformers

directory, texts, ids = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
with torch.no_grad():
    logits = model(torch.tensor(ids)).logits.numpy()
print(json.dumps({
    "ids": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts],
    "round_trip": [tokenizer.decode(tokenizer(text)["input_ids"]) for text in texts],
    "chat": tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    ),
    "logits": logits.tolist(),
}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = keras_mft.bake(keras_mft.wrap(tiny_smollm2(), layers="0:2", seed=0))
    directory = tmp_path_factory.mktemp("export") / "hf"
    keras_mft.export_to_transformers(model, directory)
    return model, directory


def test_transformers_loads_the_model_and_tokenizer_alone(exported):
    model, directory = exported
    texts = [case["text"] for case in TOKEN_CASES]
    ids = np.random.default_rng(0).integers(17, 49152, (2, 12))
    result = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_SIDE, str(directory), json.dumps(texts)]
        + [json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    # Token ids equal llama.cpp's on every reference text: digits split one by one.
    assert found["ids"] == [case["ids"] for case in TOKEN_CASES]
    assert found["round_trip"] == texts
    # SmolLM2's own chat template, its default system turn included.
    assert found["chat"] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # The removed weights are zeros in the checkpoint: the logits agree.
    expected = logits_of(model, {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})
    np.testing.assert_allclose(np.asarray(found["logits"]), expected, rtol=1e-4, atol=1e-4)


def test_refuses_a_wrapped_model_or_a_used_directory(exported, tmp_path):
    _, directory = exported
    with pytest.raises(ValueError, match="not empty"):
        keras_mft.export_to_transformers(tiny_smollm2(), directory)
    with pytest.raises(ValueError, match="call `keras_mft.bake"):
        keras_mft.export_to_transformers(keras_mft.wrap(tiny_smollm2()), tmp_path / "new")
    assert not (tmp_path / "new").exists()
