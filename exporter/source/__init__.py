"""A checkpoint and its config read into a ``SourceModel`` (timm, transformers, big_vision), every
assumption listed."""
