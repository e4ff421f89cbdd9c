"""Neural Ligand (Li, Yu, Wang, ICCV 2025, arXiv 2503.01268): Portland, in one place.

Read top-down, one run of ``merge=portland`` goes
``runner`` (run / run_many: fit, then evaluate each combination) ->
``training`` (the one trainer: a LightningModule that trains C >= 1 combinations at once) ->
``loss`` (L_b + L_a / scaling, the regulariser a pluggable piece) and ``model`` (the Portland
generator, its CoopVecs, the heads' logits) -> ``statistics`` (the experts' offset statistics,
streamed over parameters) and ``features`` (the cached expert features, held once) ->
``evaluation`` (ensembled accuracy and the three merge granularities).
"""
