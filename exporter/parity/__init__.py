"""Tolerances, ``Comparison`` and the one parity check: a candidate runner against a reference."""
