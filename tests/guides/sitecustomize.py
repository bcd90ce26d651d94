"""Shrinks the guides in examples/ for their smoke tests in test_examples.py.

`test_examples.py` puts this folder first on `PYTHONPATH` when it runs a
guide, so Python imports this module when the guide's process starts, and
when any process the guide starts does (the backends guide runs itself again
on the other backends). The guide's code runs as written; only two functions
of `keras_mft` change, once the guide imports it:

- `keras_mft.smollm2_135m_instruct()` returns a tiny random Llama with
  SmolLM2's preprocessor and 12 decoder blocks (width 16, like
  `keras_mft.tiny_smollm2()`, which has 8), so that the bands the guides
  name (0-3, 4-7 and the last four) are all different; a trace of the
  training step grows with the blocks, and is most of a guide's time here;
- `keras_mft.gsm8k(split)` returns the first 8 training or 4 held-out
  problems, so a guide that asks for more gets these.

It then says so on stderr, which the tests check.

`keras_mft` is patched when the guide imports it, not here: importing it here
would import Keras before the guide sets `KERAS_BACKEND` or `XLA_FLAGS`.
"""

import importlib.abc
import importlib.util
import sys

NUM_BLOCKS = 12
PROBLEMS = {"train": 8, "held_out": 4}


def shrink(keras_mft):
    import keras_hub
    import numpy as np

    gsm8k = keras_mft.gsm8k

    def first_problems(split):
        problems = gsm8k(split)
        return {key: values[: PROBLEMS[split]] for key, values in problems.items()}

    def tiny_model(dtype=None):
        preprocessor = keras_mft.tiny_smollm2().preprocessor
        backbone = keras_hub.models.Llama3Backbone(
            vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
            num_layers=NUM_BLOCKS,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=16,
            intermediate_dim=32,
            dtype=dtype,
        )
        rng = np.random.default_rng(0)
        backbone.set_weights(
            [
                rng.normal(0.0, 0.1, w.shape) if w.ndim > 1 else np.ones(w.shape)
                for w in backbone.get_weights()
            ]
        )
        return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)

    keras_mft.gsm8k = first_problems
    keras_mft.smollm2_135m_instruct = tiny_model
    print(f"{__file__}: keras_mft shrunk for a smoke test", file=sys.stderr)


class ShrinkOnImport(importlib.abc.MetaPathFinder):
    """Finds `keras_mft` as Python would, and shrinks it once it has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras_mft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_shrink(module):
            exec_module(module)
            shrink(module)

        spec.loader.exec_module = exec_and_shrink
        return spec


sys.meta_path.insert(0, ShrinkOnImport())
