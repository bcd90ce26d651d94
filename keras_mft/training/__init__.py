"""Training the masks as the paper's run does.

`optimizer` (`PaperAdamW`, the paper's loss), `schedule`
(`LinearWarmupDecay`), `score_budget` (how far a run lets the scores
travel), `mask_fine_tuner` (the callback), `batches` (the seeded order),
`backup` (crash-safe backups), `run` (`train`: the routine that puts them
together), `protocol` (the paper's arms and baselines) and `distribution`
(score layouts for several devices).
"""

# `keras_mft.protocol` and `keras_mft.score_budget` are these modules: the
# package's lazy `__getattr__` finds them here as attributes.
from keras_mft.training import protocol  # noqa: F401
from keras_mft.training import score_budget  # noqa: F401
