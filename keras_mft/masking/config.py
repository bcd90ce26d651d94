"""`MaskConfig`: what `wrap` masks and how, as PEFT's `LoraConfig` is for LoRA.

One object holds every setting of a mask. `keras_mft.wrap` takes it, mask
files store it (`get_config()`) and `load_masks` wraps a model from it
(`from_config`); the flags of `keras-mft train` and the keys of its TOML
config are its field names. What needs no model is checked when the config
is made, the blocks and projections when `plan` meets the model.
"""

import contextlib
import dataclasses
import numbers

from keras_mft.masking import architectures
from keras_mft.masking import selection as selections
from keras_mft.masking.layers import check_maskable
from keras_mft.masking.mask import check_sparsity

DEFAULT_BAND = "0:4"
DEFAULT_SPARSITY = 0.1
SCORE_INITS = ("random", "magnitude")
SPARSITIES = ("sparsity", "attention_sparsity", "mlp_sparsity")


class InvalidArgument(ValueError):
    """A bad `MaskConfig` setting; `argument` names the field."""

    def __init__(self, argument, message):
        super().__init__(message)
        self.argument = argument


@contextlib.contextmanager
def checking(argument):
    """Turns a ValueError raised while checking the setting `argument` into `InvalidArgument`."""
    try:
        yield
    except InvalidArgument:
        raise
    except ValueError as error:
        raise InvalidArgument(argument, str(error)) from None


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """The settings of a mask: which weights are masked, how many and how chosen.

    Args:
        layers: the decoder blocks to mask (0-based): a band `"start:stop"`
            (stop excluded, negative counts from the end, e.g. `"-4:"`), a
            list of indices (or `"1,5,9"`), or `"all"`. Defaults to `"0:4"`
            (all blocks if the model has fewer).
        targets: the projections to mask in each block, by alias (`q, k, v,
            o, gate, up, down`), KerasHub layer name (`query`, ...) or Hugging
            Face name (`q_proj`, ...): a list (or `"q,v,down"`). Defaults to
            all of the model's.
        sparsity: the fraction of weights removed from each masked matrix,
            in [0, 1): exactly `floor(sparsity * size)`. Defaults to 0.1.
        attention_sparsity: overrides `sparsity` for `q, k, v, o`.
        mlp_sparsity: overrides `sparsity` for `gate, up, down`.
        selection: `"per_matrix"` (the paper), `"global"` (one threshold per
            projection over the blocks) or `"N:M"`, e.g. `"2:4"`, which fixes
            the sparsity: leave the sparsities unset. See
            `keras_mft.masking.selection`.
        score_init: `"random"` (normal, stddev 0.02: the first mask is a
            random prune) or `"magnitude"` (`|W|`: the L1-magnitude mask).
        seed: int seed of the random scores, the same on every backend;
            `wrap` draws one if it is None.

    Example:

    ```python
    config = keras_mft.MaskConfig(layers="4:8", targets=["q", "v"], sparsity=0.1, seed=0)
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), config)
    keras_mft.MaskConfig.from_config(config.get_config()) == config  # True
    ```
    """

    layers: object = None
    targets: object = None
    sparsity: float = None
    attention_sparsity: float = None
    mlp_sparsity: float = None
    selection: str = selections.PerMatrix.name
    score_init: str = "random"
    seed: int = None

    def __post_init__(self):
        # Lists (and the comma-separated names and indices the command line
        # writes) become tuples: a config is a value, equal to its round trip.
        with checking("layers"):
            object.__setattr__(self, "layers", _checked_layers(self.layers))
        object.__setattr__(self, "targets", _as_tuple(self.targets, str))
        with checking("targets"):
            _check_targets(self.targets)
        for field in SPARSITIES:
            with checking(field):
                if getattr(self, field) is not None:
                    object.__setattr__(self, field, check_sparsity(getattr(self, field), field))
        with checking("selection"):
            fixed = selections.get(self.selection).fixed_sparsity
            given = [f for f in SPARSITIES if getattr(self, f) is not None]
            if fixed is not None and given:
                raise ValueError(
                    f"selection={self.selection!r} fixes the sparsity at {fixed}; "
                    f"leave {', '.join(given)} unset."
                )
        if self.score_init not in SCORE_INITS:
            raise InvalidArgument(
                "score_init",
                f"`score_init` must be one of {SCORE_INITS}. Received: score_init={self.score_init!r}",
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise TypeError(f"`seed` must be an int or None. Received: seed={self.seed!r}")
        if self.seed is not None and self.seed < 0:
            raise InvalidArgument(
                "seed", f"`seed` must be a non-negative int or None. Received: seed={self.seed!r}"
            )

    def sparsity_of(self, group):
        """The sparsity of the `"attention"` or `"mlp"` projections."""
        fixed = selections.get(self.selection).fixed_sparsity
        own = self.attention_sparsity if group == "attention" else self.mlp_sparsity
        for value in (fixed, own, self.sparsity):
            if value is not None:
                return value
        return DEFAULT_SPARSITY

    def plan(self, backbone):
        """What `wrap` masks in `backbone`, after checking the config against it.

        Returns:
            `[(alias, layer, sparsity, selection)]` in block order: each
            projection layer to mask, its sparsity and its selection object
            (a global selection: one object per projection, shared by its
            blocks).
        """
        blocks = backbone.transformer_layers
        with checking("layers"):
            indices = block_indices(self.layers, len(blocks))
        with checking("targets"):
            aliases = target_aliases(self.targets, architectures.layer_names_of(backbone))
        selection_of = {alias: selections.get(self.selection) for alias in aliases}
        planned = []
        for index in indices:
            projections = architectures.projections_of(backbone, blocks[index])
            for alias in aliases:
                layer = projections[alias]
                check_maskable(layer)
                with checking("selection"):
                    selection_of[alias].check(layer, architectures.kernel_of(layer).shape)
                group = architectures.GROUP_OF[alias]
                planned.append((alias, layer, self.sparsity_of(group), selection_of[alias]))
        return planned

    def get_config(self):
        """The config as a JSON-ready dict (lists, not tuples)."""
        config = dataclasses.asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in config.items()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _as_tuple(value, kind, keep=()):
    """`value` as a tuple: a list, or a comma-separated string (unless it holds one of `keep`)."""
    if isinstance(value, str) and not any(mark in value for mark in keep):
        try:
            return tuple(kind(part) for part in value.split(","))
        except ValueError:
            raise ValueError(
                f"Write a band 'start:stop', block indices '1,5,9' or 'all'. Received: {value!r}"
            ) from None
    return tuple(value) if isinstance(value, list) else value


def _checked_layers(layers):
    """`layers` as a `MaskConfig` holds it: a band, `"all"`, None or a tuple of ints."""
    layers = _as_tuple(layers, int, ("all", ":"))
    if layers is None or isinstance(layers, str):
        if layers not in (None, "all"):
            _band(layers)
        return layers
    if not isinstance(layers, tuple):
        raise TypeError(
            "`layers` must be a band like '20:24', a list of block indices, "
            f"or 'all'. Received: layers={layers!r}"
        )
    if not layers:
        raise ValueError("`layers` is empty: name at least one decoder block.")
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"`layers` must contain ints. Received: layers={list(layers)!r}")
        if index < 0:
            raise ValueError(f"Block {index} does not exist: blocks are numbered from 0.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"`layers` lists a block twice. Received: layers={list(layers)!r}")
    return tuple(int(index) for index in layers)  # numpy ints too: JSON writes only ints


def _band(band):
    """`(start, stop)` of a band 'start:stop', either part optional."""
    parts = band.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(int(part) if part.strip() else None for part in parts)
    except ValueError:
        raise ValueError(
            "A band of blocks is written 'start:stop', e.g. '20:24' for blocks "
            f"20, 21, 22 and 23. Received: layers={band!r}"
        ) from None


def block_indices(layers, num_blocks):
    """The sorted block indices that `layers` selects in a model of `num_blocks`."""
    if layers is None:
        layers = DEFAULT_BAND if num_blocks >= 4 else "all"
    if layers == "all":
        return list(range(num_blocks))
    if isinstance(layers, str):
        start, stop = _band(layers)
        start = 0 if start is None else start + num_blocks if start < 0 else start
        stop = num_blocks if stop is None else stop + num_blocks if stop < 0 else stop
        if not 0 <= start < stop <= num_blocks:
            raise ValueError(
                f"The band {layers!r} selects no valid blocks: this model has "
                f"{num_blocks} decoder blocks, so 'start:stop' needs "
                f"0 <= start < stop <= {num_blocks}."
            )
        return list(range(start, stop))
    for index in layers:
        if index >= num_blocks:
            raise ValueError(
                f"Block {index} does not exist: this model has {num_blocks} "
                f"decoder blocks, numbered 0 to {num_blocks - 1}."
            )
    return sorted(layers)


def _check_targets(targets):
    if targets is None:
        return
    if not isinstance(targets, tuple) or not all(isinstance(t, str) for t in targets):
        raise TypeError(f"`targets` must be a list of names. Received: targets={targets!r}")
    if not targets:
        raise ValueError("`targets` is empty: name at least one projection.")
    unknown = [t for t in targets if t not in architectures.KNOWN_NAMES]
    if unknown:
        raise ValueError(
            f"Unknown targets {unknown}: use the aliases {', '.join(architectures.ALIASES)}, "
            "a model's KerasHub layer names or Hugging Face names (q_proj, ...)."
        )


def target_aliases(targets, layer_names):
    """The aliases that `targets` selects, given the model's {alias: KerasHub layer name}."""
    if targets is None:
        return list(layer_names)
    targets = (targets,) if isinstance(targets, str) else targets
    alias_of = {alias: alias for alias in layer_names}
    alias_of.update({name: alias for alias, name in layer_names.items()})
    alias_of.update(
        {name: alias for name, alias in architectures.HF_NAMES.items() if alias in layer_names}
    )
    unknown = [t for t in targets if t not in alias_of]
    if unknown:
        raise ValueError(
            f"Unknown targets {unknown}. This model's projections are the aliases "
            f"{list(layer_names)} or the KerasHub layer names {list(layer_names.values())}."
        )
    chosen = {alias_of[t] for t in targets}
    return [alias for alias in layer_names if alias in chosen]
