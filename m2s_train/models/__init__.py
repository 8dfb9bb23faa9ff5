"""Stereo networks behind one registry (``create_model``, ``load_model``, ``save_model``)."""

from m2s_train.models.registry import create_model, list_models, load_model, model_config, save_model

__all__ = ["create_model", "list_models", "load_model", "model_config", "save_model"]
