"""Measurements of a bundle: bench, evaluate, the accuracy/latency frontier, plots, ``validate``."""
