"""The core: what a mask is and how a model gets one.

`mask` (the mask of one matrix and its straight-through gradient), `backends`
(where that code differs by backend), `selection` (per matrix, global, N:M),
`layers` (`MaskedDense`, `MaskedEinsumDense`), `architectures` (where each
model's projections are), `config` (`MaskConfig`), `wrapping` (`wrap`,
`bake`) and `named_masks` (several masks on one model).
"""
