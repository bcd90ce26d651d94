"""llama.cpp reads keras-mft's GGUF export: greedy tokens and top logits compared.

The embedded SmolLM2-135M-Instruct, wrapped over blocks 4-7 with 10% of their
weights removed by a seeded mask (the random mask MFT starts from: a mask in
use, not a learned one), baked, and written with `keras_mft.export_to_gguf` in
float32, float16 and Q8_0. For each file llama.cpp (`llama-cpp-python`, built
from PyPI) tokenizes a chat prompt, scores it and continues it greedily; the
table compares that with the baked Keras model: the prompt's token ids, the
top-5 next-token ids and the largest difference of their logits, and how many
of the greedy tokens agree (`CausalLM.generate` with the greedy sampler, as
`keras-mft generate` runs it).

Then the same for Llama 2's tokenizer kind: a small random `LlamaBackbone`
with the tests' SentencePiece tokenizer (byte fallback, as Llama 2's),
exported in float32: llama.cpp's token ids for a few texts, and its logits.

    nox -s llama_cpp      # or: python -m benchmarks.llama_cpp_check --json FILE

The nox session is not among the default ones: building llama-cpp-python
compiles llama.cpp (about 5 minutes on 2 cores).
"""

import argparse
import importlib.metadata
import json
import os
import tempfile

import keras
import numpy as np

import keras_mft

PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
)
NEW_TOKENS = 24
DTYPES = ("float32", "float16", "q8_0")


def keras_side(model, prompt_ids):
    """The baked model's next-token logits and its greedy continuation."""
    ids = np.asarray([prompt_ids])
    logits = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": ids >= 0}))[0, -1]
    length = len(prompt_ids) + NEW_TOKENS
    padded = np.zeros((1, length), "int32")
    padded[0, : len(prompt_ids)] = prompt_ids
    mask = np.zeros((1, length), bool)
    mask[0, : len(prompt_ids)] = True
    preprocessor, model.preprocessor = model.preprocessor, None
    try:
        model.compile(sampler="greedy")
        out = model.generate({"token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
    finally:
        model.preprocessor = preprocessor
    return logits, [int(t) for t in out["token_ids"][0, len(prompt_ids) :]]


def llama_cpp_side(path, prompt_ids):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, seed=0)
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(tokens)
    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    llm.reset()
    greedy = []
    for token in llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
        greedy.append(int(token))
        if len(greedy) == NEW_TOKENS:
            break
    return tokens, logits, greedy


def sentence_piece_row(directory):
    """A Llama 2-shaped model and tokenizer through GGUF into llama.cpp."""
    import keras_hub
    import llama_cpp

    # The tests' tokenizer (the session runs this file as a module of the repository).
    from tests.shared.models import SENTENCE_PIECE_TEXTS
    from tests.shared.models import sentence_piece_proto

    tokenizer = keras_hub.models.LlamaTokenizer(proto=sentence_piece_proto())
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=64,
        intermediate_dim=128,
    )
    rng = np.random.default_rng(0)
    backbone.set_weights([rng.normal(0, 0.1, w.shape) for w in backbone.get_weights()])
    preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer)
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=preprocessor)
    path = os.path.join(directory, "llama2_shaped.gguf")
    keras_mft.export_to_gguf(model, path, dtype="float32")
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, logits_all=True, verbose=False)
    ids_equal, difference = True, 0.0
    for text in SENTENCE_PIECE_TEXTS:
        expected = [int(t) for t in np.asarray(tokenizer(text))]
        tokens = llm.tokenize(text.encode(), add_bos=False)
        ids_equal &= tokens == expected
        llm.reset()
        llm.eval(expected)
        ids = np.asarray([expected])
        logits = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": ids >= 0}))
        got = np.asarray(llm.scores[: len(expected)], dtype=np.float32)
        difference = max(difference, float(np.abs(got - logits[0]).max()))
    return {
        "model": "Llama 2-shaped, SentencePiece (random weights)",
        "dtype": "float32",
        "ids_equal": ids_equal,
        "logit_max_difference": difference,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    model = keras_mft.wrap(keras_mft.smollm2_135m_instruct(), layers="4:8", sparsity=0.1, seed=0)
    model = keras_mft.bake(model)
    prompt_ids = [int(t) for t in np.asarray(model.preprocessor.tokenizer(PROMPT))]
    keras_logits, keras_greedy = keras_side(model, prompt_ids)
    keras_top = np.argsort(-keras_logits)[:5]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for dtype in DTYPES:
            path = os.path.join(directory, f"model_{dtype}.gguf")
            keras_mft.export_to_gguf(model, path, dtype=dtype)
            tokens, logits, greedy = llama_cpp_side(path, prompt_ids)
            agree = next((i for i, (a, b) in enumerate(zip(greedy, keras_greedy)) if a != b), None)
            rows.append(
                {
                    "dtype": dtype,
                    "prompt_ids_equal": tokens == prompt_ids,
                    "top5_ids_equal": np.argsort(-logits)[:5].tolist() == keras_top.tolist(),
                    "top5_logit_max_difference": float(
                        np.abs(logits[keras_top] - keras_logits[keras_top]).max()
                    ),
                    "greedy_tokens_equal_before_first_difference": (
                        NEW_TOKENS if agree is None else agree
                    ),
                    "greedy_tokens": NEW_TOKENS,
                }
            )
        llama2 = sentence_piece_row(directory)
    versions = {
        name: importlib.metadata.version(name)
        for name in ("llama-cpp-python", "gguf", "sentencepiece", "keras", "keras-hub", "keras-mft")
    }
    versions["backend"] = keras.config.backend()
    print(f"versions: {versions}")
    print(
        "| GGUF dtype | prompt ids equal | top-5 ids equal | top-5 logit max diff | greedy tokens equal |"
    )
    print("|---|---|---|---:|---:|")
    for row in rows:
        print(
            f"| {row['dtype']} | {row['prompt_ids_equal']} | {row['top5_ids_equal']} | "
            f"{row['top5_logit_max_difference']:.4f} | "
            f"{row['greedy_tokens_equal_before_first_difference']} of {NEW_TOKENS} |"
        )
    print(
        f"\n{llama2['model']}, {llama2['dtype']}: token ids equal {llama2['ids_equal']}, "
        f"largest logit difference {llama2['logit_max_difference']:.2e}"
    )
    if args.json:
        results = {"versions": versions, "prompt": PROMPT, "rows": rows, "llama2": llama2}
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
