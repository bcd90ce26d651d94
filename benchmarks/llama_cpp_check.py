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

Then small random models of the other families and tokenizer kinds the
export covers, with the tests' tokenizers, in float32: a Llama with a
SentencePiece tokenizer (byte fallback, as Llama 2's), a Mistral with the
same, a Qwen3 with a byte-level BPE one: llama.cpp's token ids for a few
texts, and its logits.

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


def family_rows(directory):
    """Small random models of the other families and tokenizer kinds through GGUF
    into llama.cpp: Llama 2's (SentencePiece), Mistral (SentencePiece), Qwen3
    (byte-level BPE, Qwen's pre-tokenizer)."""
    import keras_hub
    import llama_cpp

    # The tests' models and tokenizers (the session runs this file as a module
    # of the repository).
    from tests.shared.models import SENTENCE_PIECE_TEXTS
    from tests.shared.models import qwen3_tokenizer
    from tests.shared.models import sentence_piece_proto
    from tests.shared.models import small_causal_lm

    proto = sentence_piece_proto()
    tokenizers = {
        "llama": keras_hub.models.LlamaTokenizer(proto=proto),
        "mistral": keras_hub.models.MistralTokenizer(proto=proto),
        "qwen3": qwen3_tokenizer(),
    }
    rows = []
    for family, tokenizer in tokenizers.items():
        model = small_causal_lm(family, tokenizer)
        path = os.path.join(directory, f"{family}.gguf")
        keras_mft.export_to_gguf(model, path, dtype="float32")
        llm = llama_cpp.Llama(model_path=path, n_ctx=128, logits_all=True, verbose=False)
        ids_equal, difference = True, 0.0
        for text in SENTENCE_PIECE_TEXTS:
            expected = [int(t) for t in np.asarray(tokenizer(text))]
            ids_equal &= llm.tokenize(text.encode(), add_bos=False) == expected
            llm.reset()
            llm.eval(expected)
            ids = np.asarray([expected])
            logits = keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": ids >= 0}))
            got = np.asarray(llm.scores[: len(expected)], dtype=np.float32)
            difference = max(difference, float(np.abs(got - logits[0]).max()))
        rows.append(
            {
                "model": f"{type(model.backbone).__name__}, {type(tokenizer).__name__}",
                "dtype": "float32",
                "ids_equal": ids_equal,
                "logit_max_difference": difference,
                "logit_max": float(np.abs(logits).max()),
            }
        )
    return rows


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
        families = family_rows(directory)
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
    print("\n| small random model (float32) | token ids equal | largest logit difference |")
    print("|---|---|---:|")
    for row in families:
        print(f"| {row['model']} | {row['ids_equal']} | {row['logit_max_difference']:.2e} |")
    if args.json:
        results = {"versions": versions, "prompt": PROMPT, "rows": rows, "families": families}
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
