"""Training the masks as the paper's run does.

`optimizer` (`PaperAdamW`, the paper's loss), `schedule`
(`LinearWarmupDecay`), `score_budget` (how far a run lets the scores
travel), `mask_fine_tuner` (the callback), `batches` (the seeded order),
`backup` (crash-safe backups), `run` (`train`: the routine that puts them
together), `protocol` (the paper's arms and baselines) and `distribution`
(score layouts for several devices).
"""

import lazy_loader

# `keras_mft.protocol` and `keras_mft.score_budget` are these modules, which
# `keras_mft`'s lazy `__getattr__` asks this package for: imported on use.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, ["protocol", "score_budget"])
