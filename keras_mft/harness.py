"""`KerasMFTLM`: a KerasHub causal LM, with or without masks, as an lm-evaluation-harness model.

Importing this module registers the model under the name `keras-mft`, so
lm-eval's own tools take it (`lm_eval.simple_evaluate(model="keras-mft",
model_args="pretrained=DIR,masks=FILE", tasks=[...])`). It answers lm-eval's
three kinds of request as lm-eval's `hf` model does, so the two give the
same numbers for the same checkpoint:

- `loglikelihood`: lm-eval's `TemplateLM` splits context and continuation
  into tokens; the context is cut from the left to `max_length`, and the
  continuation's log-probability is summed, with whether greedy decoding
  would have produced it;
- `loglikelihood_rolling`: lm-eval's rolling windows of `max_length` tokens,
  each scored as above;
- `generate_until`: greedy decoding through KerasHub's cached `generate`
  (`keras_mft.evaluation.greedy_ids`), cut at lm-eval's stop strings.

Requests run in batches of similar length, each padded to its longest (on
JAX and TensorFlow, which compile a pass per shape, to one of eight widths
per doubling), and the vocabulary-wide output layer runs only where a scored
token is predicted.
lm-eval is an optional dependency: `pip install "keras-mft[lm-eval]"`.
"""

import keras
import lm_eval
import numpy as np
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.tasks import TaskManager
from tqdm import tqdm

from keras_mft.data.chat_templates import render_text
from keras_mft.data.chat_templates import resolve_template
from keras_mft.evaluation import greedy_ids
from keras_mft.masking.named_masks import use_masks
from keras_mft.saving.mask_file import load_masks
from keras_mft.saving.preset import load_preset


def evaluate(model, tasks, masks=(), include_path=None, **options):
    """lm-eval's results for the base model and each mask file, in one process.

    The mask files are loaded as named masks (`keras_mft.load_masks(...,
    name=path)`) and put in use one after the other, so the model is loaded
    once; the base model is the model with none in use.

    Args:
        model: a `CausalLM` with its preprocessor, not wrapped.
        tasks: lm-eval task names, e.g. `["arc_easy"]`.
        masks: mask files of this model.
        include_path: a directory of more lm-eval task files (YAML), or a
            list of them.
        **options: `KerasMFTLM`'s `batch_size` and `max_length`, and
            `lm_eval.simple_evaluate`'s (`num_fewshot`, `limit`, `confirm_run_unsafe_code`).

    Returns:
        `{"base model" or mask file: lm_eval.simple_evaluate's results}`.
    """
    settings = {key: options.pop(key) for key in ("batch_size", "max_length") if key in options}
    for path in masks:
        load_masks(model, path, name=path)
    task_manager = TaskManager(include_path=include_path)
    results = {}
    for arm in ("base model", *masks):
        if masks:
            use_masks(model, None if arm == "base model" else arm)
        lm = KerasMFTLM(model=model, **settings)
        results[arm] = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=task_manager, **options
        )
    return results


def tables(results):
    """lm-eval's table of each arm of `evaluate`'s results, under the arm's name."""
    return "\n".join(f"## {arm}\n\n{utils.make_table(result)}" for arm, result in results.items())


@register_model("keras-mft")
class KerasMFTLM(TemplateLM):
    """A KerasHub `CausalLM` that lm-eval can evaluate, with masks in use or not.

    Args:
        pretrained: a KerasHub preset handle or directory, or a Hugging Face
            checkpoint directory (what `keras_hub.models.CausalLM.from_preset`
            loads); or give `model`.
        model: a `CausalLM` with its preprocessor (wrapped or not), instead of
            `pretrained`.
        masks: a mask file to load onto the model (`keras_mft.load_masks`).
        dtype: the dtype to load `pretrained` in, e.g. `"bfloat16"`.
        keras_backend: the backend the caller expects; Keras reads
            `KERAS_BACKEND` once, so another one is refused, not switched to.
        batch_size: requests per forward pass.
        max_length: the most tokens of context the model sees (lm-eval's
            `max_length`).
        max_gen_toks: tokens generated when a request does not say.

    Example:

    ```python
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2", seed=0)
    lm = keras_mft.harness.KerasMFTLM(model=model, max_length=64)
    # lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])
    ```
    """

    def __init__(
        self,
        pretrained=None,
        model=None,
        masks=None,
        dtype=None,
        keras_backend=None,
        batch_size=8,
        max_length=2048,
        max_gen_toks=256,
    ):
        super().__init__()
        if keras_backend is not None and keras_backend != keras.backend.backend():
            raise ValueError(
                f"Keras runs on {keras.backend.backend()}, not {keras_backend}: set "
                f"KERAS_BACKEND={keras_backend} before Python starts."
            )
        if (pretrained is None) == (model is None):
            raise ValueError("Give either `pretrained` (a preset) or `model` (a CausalLM).")
        if model is None:
            model = load_preset(pretrained, dtype=dtype)
        if model.preprocessor is None:
            raise ValueError(
                "The model needs its preprocessor: its tokenizer reads lm-eval's text."
            )
        if masks is not None:
            load_masks(model, masks)
        self.model, self.tokenizer = model, model.preprocessor.tokenizer
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.max_gen_toks = int(max_gen_toks)
        self._name = str(pretrained or type(model).__name__)

    @property
    def eot_token_id(self):
        return self.tokenizer.end_token_id

    @property
    def prefix_token_id(self):
        # As lm-eval's `hf` model: the start token if the tokenizer has one.
        start = getattr(self.tokenizer, "start_token_id", None)
        return self.eot_token_id if start is None else start

    @property
    def tokenizer_name(self):
        return self._name

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        ids = keras.ops.convert_to_numpy(self.tokenizer.tokenize(string)).tolist()
        return [self.prefix_token_id, *ids] if add_special_tokens else ids

    def tok_decode(self, ids):
        """Text of `ids` without special tokens, as `hf` decodes generations."""
        special = set(getattr(self.tokenizer, "special_token_ids", ()) or ())
        kept = np.asarray([i for i in ids if i not in special], "int32")
        text = self.tokenizer.detokenize(kept) if kept.size else ""
        if not isinstance(text, str):
            text = keras.ops.convert_to_numpy(text).item()
        return text.decode("utf-8") if isinstance(text, bytes) else text

    def chat_template(self, chat_template=False):
        return resolve_template(self.tokenizer) if chat_template else None

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return render_text(
            resolve_template(self.tokenizer),
            chat_history,
            add_generation_prompt=add_generation_prompt,
        )

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        """`(log-probability, is greedy)` of each `(request, context ids, continuation ids)`."""
        order = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        results = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="Scoring requests")
        for chunk in order.get_batched(n=self.batch_size):
            # The model sees at most `max_length` tokens, the last one unseen.
            rows = [(c + t)[-(self.max_length + 1) :] for _, c, t in chunk]
            scores, greedy = self._score(rows, [len(t) for _, _, t in chunk])
            for (request, _, _), score, flags in zip(chunk, scores, greedy):
                answer = float(score.sum()), bool(flags.all())
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, answer)
                results.append(answer)
            progress.update(len(chunk))
        progress.close()
        return order.get_original(results)

    def _score(self, rows, lengths):
        """Each row's last `length` tokens: their log-probabilities and whether greedy.

        The backbone reads each row but its last token; the output embedding
        (`token_embedding(..., reverse=True)`, as every KerasHub `CausalLM`
        ends) runs only where a scored token is predicted, a few rows of the
        vocabulary-wide logits instead of all of them.
        """
        # A compiled forward pass (JAX, TensorFlow) is compiled once per shape:
        # there, whole batches, and widths rounded up to one of eight per
        # doubling (52, 56, 60, 64, 72, ...), let one serve many for at most
        # 1/8 more tokens.
        longest = max(len(ids) for ids in rows) - 1
        if keras.backend.backend() == "torch":
            width, batch = longest, len(rows)
        else:
            step = 2 ** max(longest.bit_length() - 4, 0)
            width, batch = min(-(-longest // step) * step, self.max_length), self.batch_size
        token_ids = np.zeros((batch, width), "int32")
        padding_mask = np.zeros((batch, width), bool)
        for row, ids in enumerate(rows):
            token_ids[row, : len(ids) - 1], padding_mask[row, : len(ids) - 1] = ids[:-1], True
        hidden = self.model.backbone.predict_on_batch(
            {"token_ids": token_ids, "padding_mask": padding_mask}
        )
        hidden = np.concatenate(
            [
                hidden[row, len(ids) - 1 - n : len(ids) - 1]
                for row, (ids, n) in enumerate(zip(rows, lengths))
            ]
        )
        targets = np.concatenate([ids[len(ids) - n :] for ids, n in zip(rows, lengths)])
        scores, greedy = [], []
        for start in range(0, len(targets), self.max_length):  # one window's logits at a time
            piece = slice(start, start + self.max_length)
            logits = self.model.backbone.token_embedding(hidden[piece], reverse=True)
            logits = keras.ops.cast(logits, "float32")
            target = keras.ops.convert_to_tensor(targets[piece][:, None])
            log_probs = keras.ops.take_along_axis(keras.ops.log_softmax(logits), target, axis=-1)
            scores.append(keras.ops.convert_to_numpy(log_probs)[:, 0])
            greedy.append(keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1)))
        greedy = np.concatenate(greedy) == targets
        splits = np.cumsum(lengths)[:-1]
        return np.split(np.concatenate(scores), splits), np.split(greedy, splits)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        results = []
        for (text,) in (request.args for request in requests):
            windows = utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            pieces = [(None, *utils.make_disjoint_window(window)) for window in windows]
            total = sum(score for score, _ in self._loglikelihood_tokens(pieces, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests, disable_tqdm=False):
        eos = self.tokenizer.id_to_token(self.eot_token_id)  # a stop string, as for `hf`
        jobs = []
        for context, gen_kwargs in (request.args for request in requests):
            settings = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if settings["do_sample"]:
                raise ValueError("keras-mft's lm-eval model decodes greedily: set do_sample=False.")
            steps = settings["max_gen_toks"]
            prompt = self.tok_encode(context)[-(self.max_length - steps) :]
            until = handle_stop_sequences(settings["until"], eos=eos)
            jobs.append((prompt, steps, until, (context, gen_kwargs)))
        results = [None] * len(jobs)
        # Batches of one length of generation, longest prompts first.
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i][1], -len(jobs[i][0])))
        for steps in sorted({steps for _, steps, _, _ in jobs}):
            indices = [i for i in order if jobs[i][1] == steps]
            prompts = [jobs[i][0] for i in indices]
            outputs = greedy_ids(self.model, prompts, steps, [self.eot_token_id], self.batch_size)
            for i, ids in zip(indices, outputs, strict=True):
                _, _, until, request = jobs[i]
                results[i] = postprocess_generated_text(self.tok_decode(ids), until, None)
                self.cache_hook.add_partial("generate_until", request, results[i])
        return results
