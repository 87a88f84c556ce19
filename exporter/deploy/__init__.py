"""Serving a bundle: Triton model repositories, a local ``tritonserver``, the Python-backend models."""
