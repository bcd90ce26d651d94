"""Training the masks as the paper's run does.

`optimizer` (`PaperAdamW`, the paper's loss), `schedule`
(`LinearWarmupDecay`), `score_budget` (how far a run lets the scores
travel), `mask_fine_tuner` (the callback), `batches` (the seeded order),
`backup` (crash-safe backups), `run` (`train`: the routine that puts them
together), `protocol` (the paper's arms and baselines) and `distribution`
(score layouts for several devices).
"""
