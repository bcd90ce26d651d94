"""keras_mft.export_to_transformers: a baked model that transformers loads alone,
for every family `wrap` takes, with its tokenizer where one can be built offline."""

import json
import pathlib
import subprocess
import sys

import keras_hub
import numpy as np
import pytest
import safetensors.numpy

import keras_mft
from keras_mft.embedded.smollm2 import tiny_smollm2
from tests.shared.models import FAMILIES
from tests.shared.models import SENTENCE_PIECE_TEXTS
from tests.shared.models import logits_of
from tests.shared.models import qwen3_tokenizer
from tests.shared.models import sentence_piece_proto
from tests.shared.models import small_causal_lm

# The module's fixture exports every model once, on one worker.
pytestmark = pytest.mark.xdist_group("hf_export")
DATA = pathlib.Path(__file__).parent / "data"
TOKEN_CASES = json.loads((DATA / "smollm2_tokens.json").read_text(encoding="utf-8"))["cases"]
# SentencePiece's and transformers' conversion of it differ on runs of spaces
# and on text before a special token (docs/deploy.md): not among these.
TEXTS = SENTENCE_PIECE_TEXTS

# Run by a Python that refuses to import keras_mft or keras: what transformers
# reads must stand on its own. Each job is a directory, token ids for the
# model (or none) and texts for the tokenizer (or none).
TRANSFORMERS_SIDE = """
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_mft", "keras", "keras_hub"):
            raise ImportError(f"{name} must not be needed")

sys.meta_path.insert(0, Refuse())
import torch
import transformers

results = {}
for name, job in json.loads(sys.stdin.read()).items():
    found = results[name] = {}
    if job["ids"]:
        model = transformers.AutoModelForCausalLM.from_pretrained(job["directory"], dtype=torch.float32)
        with torch.no_grad():
            found["logits"] = model(torch.tensor(job["ids"])).logits.numpy().tolist()
    if job["texts"]:
        tokenizer = transformers.AutoTokenizer.from_pretrained(job["directory"])
        found["ids"] = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in job["texts"]]
        found["round_trip"] = [
            tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])
            for text in job["texts"]
        ]
        if tokenizer.chat_template:
            found["chat"] = tokenizer.apply_chat_template(
                [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
            )
print(json.dumps(results))
"""


def tokenizers():
    """family -> a KerasHub tokenizer that keras-mft's converters export."""
    proto = sentence_piece_proto()
    return {
        "llama": keras_hub.models.LlamaTokenizer(proto=proto),
        "phi3": keras_hub.models.Phi3Tokenizer(proto=proto),
        "qwen3": qwen3_tokenizer(),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every export of this module, and what transformers makes of it (one process)."""
    root = tmp_path_factory.mktemp("export")
    ids = np.random.default_rng(0).integers(1, 64, (2, 7))
    cases, jobs = {}, {}
    for family in FAMILIES:
        model = keras_mft.wrap(small_causal_lm(family), layers="all", sparsity=0.2, seed=0)
        removed = sum(int((~mask).sum()) for mask in keras_mft.masks_of(model).values())
        model = keras_mft.bake(model)
        batch = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
        keras_mft.export_to_transformers(model, root / family)
        cases[family] = {"logits": logits_of(model, batch), "removed": removed}
        jobs[family] = {"directory": str(root / family), "ids": ids.tolist(), "texts": None}
    for family, tokenizer in tokenizers().items():
        model = small_causal_lm(family, tokenizer)
        keras_mft.export_to_transformers(model, root / f"{family}_tokenizer")
        cases[f"{family}_tokenizer"] = {"tokenizer": tokenizer}
        jobs[f"{family}_tokenizer"] = {
            "directory": str(root / f"{family}_tokenizer"),
            "ids": None,
            "texts": TEXTS + (["<|im_end|>\n<|im_start|>user"] if family == "qwen3" else []),
        }
    smollm2 = keras_mft.bake(keras_mft.wrap(tiny_smollm2(), layers="0:2", seed=0))
    smollm2_ids = np.random.default_rng(0).integers(17, 49152, (2, 12))
    batch = {"token_ids": smollm2_ids, "padding_mask": np.ones_like(smollm2_ids, bool)}
    # KerasHub's own method, as a KerasHub user calls it.
    smollm2.export_to_transformers(str(root / "smollm2"))
    cases["smollm2"] = {"logits": logits_of(smollm2, batch), "model": smollm2}
    jobs["smollm2"] = {
        "directory": str(root / "smollm2"),
        "ids": smollm2_ids.tolist(),
        "texts": [case["text"] for case in TOKEN_CASES],
    }
    result = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_SIDE],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    return root, cases, found


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_in_transformers_with_the_same_logits(exported, family):
    root, cases, found = exported
    np.testing.assert_allclose(
        np.asarray(found[family]["logits"]), cases[family]["logits"], rtol=1e-4, atol=1e-4
    )
    # The removed weights are zeros in the checkpoint (random weights have none).
    weights = safetensors.numpy.load_file(root / family / "model.safetensors")
    zeros = sum(int((value == 0).sum()) for value in weights.values())
    assert zeros >= cases[family]["removed"] > 0


@pytest.mark.parametrize("family", ["llama", "phi3", "qwen3"])
def test_keras_mft_tokenizers_load_in_transformers_with_the_same_ids(exported, family):
    _, cases, found = exported
    tokenizer = cases[f"{family}_tokenizer"]["tokenizer"]
    texts = TEXTS + (["<|im_end|>\n<|im_start|>user"] if family == "qwen3" else [])
    expected = [np.asarray(tokenizer(text)).tolist() for text in texts]
    assert found[f"{family}_tokenizer"]["ids"] == expected
    assert found[f"{family}_tokenizer"]["round_trip"] == texts
    if family == "phi3":  # its turn tokens name Phi-3's chat template
        assert found["phi3_tokenizer"]["chat"] == "<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_smollm2_exports_through_keras_hubs_own_method(exported):
    _, cases, found = exported
    # Token ids equal llama.cpp's on every reference text: digits split one by one.
    assert found["smollm2"]["ids"] == [case["ids"] for case in TOKEN_CASES]
    assert found["smollm2"]["round_trip"] == [case["text"] for case in TOKEN_CASES]
    # SmolLM2's own chat template, its default system turn included.
    assert found["smollm2"]["chat"] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    np.testing.assert_allclose(
        np.asarray(found["smollm2"]["logits"]), cases["smollm2"]["logits"], rtol=1e-4, atol=1e-4
    )


def test_refuses_a_wrapped_model_or_a_used_directory_and_leaves_nothing(exported, tmp_path):
    root, cases, _ = exported
    with pytest.raises(ValueError, match="not empty"):
        keras_mft.export_to_transformers(tiny_smollm2(), root / "smollm2")
    with pytest.raises(ValueError, match="call `keras_mft.bake"):
        keras_mft.export_to_transformers(keras_mft.wrap(tiny_smollm2()), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    phi3 = small_causal_lm("phi3")
    phi3.backbone.rope_scaling_type = "su"  # Phi-3's 128k-context variants
    with pytest.raises(ValueError, match="without rotary scaling"):
        keras_mft.export_to_transformers(phi3, tmp_path / "phi3")
    assert not (tmp_path / "phi3").exists()
