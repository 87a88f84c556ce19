"""From a ``SourceModel`` to a bundle: plan, PI-resize, variants, export, parity, fp16/int8, shared
weights; ``pipeline`` alone knows the order of the stages."""
