"""SmolLM2's tokenizer: KerasHub's Llama 3 tokenizer with one word per digit.

SmolLM2 uses GPT-2's byte-level BPE, but its pre-tokenizer first cuts off
special tokens and every digit (`\\p{N}`) as words of their own, and only then
applies GPT-2's split to the text in between. In eager calls KerasHub's
`Llama3Tokenizer` splits text with Llama 3's pattern instead (it groups up to
three digits, and treats spaces and line breaks differently), so many texts
come out with other ids than SmolLM2 was trained on.

`SmolLM2Tokenizer` changes only this word split, on both of KerasHub's
tokenization paths:

- the Python path (the `tokenizers` library), used for eager calls: its
  pre-tokenizer becomes SmolLM2's own, `Digits` then GPT-2's `ByteLevel`;
- the TensorFlow path, used inside `tf.data` and `tf.function`: the split is
  rewritten with RE2 patterns. KerasHub's own TensorFlow split applies GPT-2's
  whitespace rule to spaces only (not to line breaks or tabs), and the
  placeholders it puts in for special tokens clash when there are more than
  ten of them (SmolLM2 has 17). The byte-pair merges are KerasHub's.
"""

import json
import os

import keras
import regex
from keras_hub.models import Llama3Tokenizer
from keras_hub.src.utils.tensor_utils import preprocessing_function
from keras_hub.src.utils.tensor_utils import tf
from keras_hub.src.utils.tensor_utils import tf_text
from tokenizers import pre_tokenizers

# One Unicode number character: SmolLM2's first pre-tokenization step.
DIGIT = r"\p{N}"

# Unicode White_Space, which `\s` means to llama.cpp and `tokenizers` (RE2's
# `\s` is ASCII only).
_SPACES = (
    r"\t\n\x0b\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
    r"\x{202f}\x{205f}\x{3000}"
)
WHITESPACE = f"[{_SPACES}]"
NON_WHITESPACE = f"[^{_SPACES}]"

# GPT-2's `\s+(?!\S)` keeps the last whitespace character before a word out of
# the whitespace token. RE2 has no lookahead, so that character is first cut
# off with a boundary marker. A digit can serve as the marker: the text that
# reaches this split holds no digits, they were split off before.
BOUNDARY = "0"

# GPT-2's pre-tokenizer pattern for digit-free text, plus the marker.
GPT2_SPLIT = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+"
    f"| ?[^{_SPACES}\\p{{L}}\\p{{N}}]+|{WHITESPACE}+|{BOUNDARY}"
)


@keras.saving.register_keras_serializable(package="keras_mft")
class SmolLM2Tokenizer(Llama3Tokenizer):
    """SmolLM2's byte-pair tokenizer.

    Same vocabulary format and special-token handling as
    `keras_hub.models.Llama3Tokenizer`, with SmolLM2's pre-tokenizer: every
    digit is a word of its own, the text between digits and special tokens
    is split as GPT-2 splits it. Token ids equal llama.cpp's for SmolLM2,
    in eager calls and inside `tf.data` alike.

    Args:
        vocabulary: dict mapping token strings to ids, or the path of a
            `vocabulary.json` file.
        merges: list of merge rules (`"a b"` strings), or the path of a
            `merges.txt` file.
        bos_token: string. The start token; `"<|im_start|>"` for SmolLM2.
        eos_token: string. The end token, also the generation stop token;
            `"<|im_end|>"` for SmolLM2.
        misc_special_tokens: iterable of strings. Other control tokens that
            are never split, e.g. `"<|endoftext|>"`.
        chat_template: string or `None`. SmolLM2's Jinja chat template (the
            GGUF file's `tokenizer.chat_template`), which
            `keras_mft.instruction_dataset` uses unless told otherwise.
        **kwargs: passed to `keras_hub.tokenizers.BytePairTokenizer`.

    Example:
    ```python
    from keras_mft.embedded.smollm2 import smollm2_135m_instruct

    tokenizer = smollm2_135m_instruct().preprocessor.tokenizer
    tokenizer("Paid $15000 in 2023")
    tokenizer.detokenize(tokenizer("<|im_start|>user\\nHi<|im_end|>"))
    ```
    """

    # Out of KerasHub's lookup of a preset's tokenizer class by backbone class
    # (see `SmolLM2CausalLM`): a Llama 3 preset keeps Llama 3's tokenizer.
    backbone_cls = None

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        misc_special_tokens=(),
        chat_template=None,
        **kwargs,
    ):
        self.chat_template = chat_template
        self._misc_special_tokens = sorted(set(misc_special_tokens) - {bos_token, eos_token})
        super().__init__(
            vocabulary=vocabulary,
            merges=merges,
            bos_token=bos_token,
            eos_token=eos_token,
            misc_special_tokens=set(self._misc_special_tokens),
            **kwargs,
        )

    def _set_vocabulary_and_merges_tokenizers(self, vocabulary, merges):
        super()._set_vocabulary_and_merges_tokenizers(vocabulary, merges)
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=self.add_prefix_space, use_regex=True),
            ]
        )

    def _split_words_tf(self, inputs):
        """Split a batch of strings into words: `[batch, (words)]`."""
        # Special tokens and digits first, longest special token first, as
        # llama.cpp does. Both are words already.
        specials = sorted(self.unsplittable_tokens or [], key=len, reverse=True)
        whole_word = "|".join([regex.escape(t) for t in specials] + [DIGIT])
        pieces = tf_text.regex_split(inputs, whole_word, whole_word)
        flat_pieces = pieces.flat_values
        is_whole = tf.strings.regex_full_match(flat_pieces, whole_word)
        # GPT-2's split of the other pieces (empty rows for whole words).
        text = tf.where(is_whole, "", flat_pieces)
        text = tf.strings.regex_replace(
            text, f"({WHITESPACE})({NON_WHITESPACE})", rf"{BOUNDARY}\1\2"
        )
        split = tf_text.regex_split(text, GPT2_SPLIT, GPT2_SPLIT)
        split = tf.ragged.boolean_mask(split, tf.not_equal(split, BOUNDARY))
        whole = tf.ragged.boolean_mask(flat_pieces[:, None], is_whole[:, None])
        words = tf.concat([split, whole], axis=1)
        return pieces.with_flat_values(words).merge_dims(1, 2)

    def _encode_words_tf(self, words):
        """Byte-pair encode a flat tensor of words: `[words, (tokens)]`."""
        cached = self.cache.lookup(words)
        has_unseen_words = tf.reduce_any((cached == "") & (words != ""))

        def encode_unseen_words():
            self._bpe_merge_and_update_cache_tf(tf.boolean_mask(words, cached == ""))
            return self.cache.lookup(words)

        merged = tf.cond(has_unseen_words, encode_unseen_words, lambda: cached)
        tokens = tf.strings.split(merged, sep=" ")
        if self.compute_dtype != tf.string:
            tokens = self.token_to_id_map.lookup(tokens)
        return tokens

    @preprocessing_function
    def _tokenize_tf(self, inputs):
        # `BytePairTokenizer._tokenize_tf` with SmolLM2's word split.
        self._maybe_initialized_tf()
        if self.add_prefix_space:
            inputs = tf.strings.join([" ", inputs])
        inputs = tf.convert_to_tensor(inputs)
        unbatched = inputs.shape.rank == 0
        if unbatched:
            inputs = tf.expand_dims(inputs, 0)
        if inputs.shape.rank > 1:
            raise ValueError(
                "`tokenize()` inputs should be a string, list of strings, or "
                f"string tensor with rank < 2. Received: {inputs}"
            )
        words = self._split_words_tf(inputs)
        tokens = self._encode_words_tf(words.flat_values)
        tokens = tf.RaggedTensor.from_row_splits(
            tokens.flat_values, tf.gather(tokens.row_splits, words.row_splits)
        )
        if self.sequence_length:
            output_shape = tokens.shape.as_list()
            output_shape[-1] = self.sequence_length
            tokens = tokens.to_tensor(shape=output_shape)
        if unbatched:
            tokens = tf.squeeze(tokens, 0)
            tf.ensure_shape(tokens, shape=[self.sequence_length])
        return tokens

    def export_to_transformers(self, path):
        """Writes the tokenizer in Hugging Face's format, as KerasHub's tokenizers do.

        `tokenizer.json` is the `tokenizers` object this tokenizer already
        tokenizes with in eager calls (the same vocabulary, merges, special
        tokens and digit-splitting pre-tokenizer, whose ids equal llama.cpp's);
        `tokenizer_config.json` names its start and end tokens and its chat
        template. A model config already in `path` (`config.json`,
        `generation_config.json`) gets the same start and end token ids.
        """
        os.makedirs(path, exist_ok=True)
        self._tokenizer.save(os.path.join(path, "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.start_token,
            "eos_token": self.end_token,
            "pad_token": self.end_token,
            "unk_token": None,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 8192,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as file:
            json.dump(config, file, indent=2, ensure_ascii=False)
        for name in ("config.json", "generation_config.json"):
            config_path = os.path.join(path, name)
            if os.path.exists(config_path):
                with open(config_path, encoding="utf-8") as file:
                    model_config = json.load(file)
                model_config["bos_token_id"] = self.start_token_id
                model_config["eos_token_id"] = self.end_token_id
                with open(config_path, "w", encoding="utf-8") as file:
                    json.dump(model_config, file, indent=2)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bos_token": self.start_token,
                "eos_token": self.end_token,
                "misc_special_tokens": self._misc_special_tokens,
                "chat_template": self.chat_template,
            }
        )
        return config
