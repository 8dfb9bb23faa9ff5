"""Mono2Stereo training: synthesis, datasets, models, losses, trainer, metrics (``m2s-train``)."""
