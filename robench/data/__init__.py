"""Datasets: the Dataset contract (``base``), the KADID-10k distortions, the built-in ``mini``
set, loaders for the official layouts of the real datasets, and safe downloads (``fetch``).
Each dataset module registers itself in ``robench.core.registry.DATASETS``."""
