"""One model registry: every stereo network is created by name + typed config.

``create_model("igev", max_disp=256)`` builds the registered variant with overrides (None
overrides are ignored); an unknown name raises listing the valid ones. Checkpoints are
safetensors weights + a JSON config naming the model, loadable without the training CLI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from calib.safe_files import read_json, write_bytes_atomic, write_json_atomic
from m2s_train.config import from_dict
from m2s_train.errors import ConfigError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, tuple[type, Any, Callable[[Any], nn.Module]]] = {}


def register_model(name: str, config: Any, factory: Callable[[Any], nn.Module]) -> None:
    """Register ``factory(config)`` under ``name`` with a default (frozen dataclass) config."""
    if name in _REGISTRY:
        raise ConfigError(f"model '{name}' is registered twice")
    _REGISTRY[name] = (type(config), config, factory)


def list_models() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def model_config(name: str, **overrides: Any) -> Any:
    """The registered default config of ``name`` with non-None ``overrides`` applied."""
    _ensure_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    cls, default, _ = _REGISTRY[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"model '{name}' has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(fields))}")
    try:
        return dataclasses.replace(default, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model '{name}': {exc}") from None


def create_model(name: str, config: Any | None = None, **overrides: Any) -> nn.Module:
    """Build model ``name`` from ``config`` (default: the registered one) plus overrides."""
    config = model_config(name, **overrides) if config is None else dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    _, _, factory = _REGISTRY[name]
    model = factory(config)
    model.model_name = name  # type: ignore[attr-defined]
    return model


def describe(model: nn.Module) -> dict[str, Any]:
    """``{"name": ..., "config": {...}}``: what a checkpoint needs to rebuild ``model``."""
    return {"name": model.model_name, "config": dataclasses.asdict(model.config)}


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (the name and config also in its metadata) + ``model.json`` atomically."""
    from safetensors.torch import save

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # serialised in memory, then written like every other file (safetensors' own writer leaves 0600)
    write_bytes_atomic(directory / "model.safetensors", save(state, metadata={"model": json.dumps(describe(model))}))
    write_json_atomic(directory / "model.json", describe(model))
    return directory


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory of ``path`` (the directory itself or its ``model.safetensors``), checked
    to hold both ``model.safetensors`` and ``model.json``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {path} not found")
    directory = path if path.is_dir() else path.parent
    missing = [n for n in ("model.safetensors", "model.json") if not (directory / n).is_file()]
    if missing or (path.is_file() and path.name != "model.safetensors"):
        raise ConfigError(f"{path} is not a model checkpoint: expected a directory with model.safetensors and "
                          f"model.json{' (missing ' + ', '.join(missing) + ')' if missing else ''}")
    return directory


def saved_config(cls: type, config: Any) -> Any:
    """A config dict as saved in a checkpoint, with the fields it predates filled in with what their
    absence means (``cls.ABSENT_MEANS``; e.g. a checkpoint from before the confidence head has none)."""
    if not isinstance(config, dict):
        return config
    return {**getattr(cls, "ABSENT_MEANS", {}), **config}


def _config_differences(a: Any, b: Any) -> list[str]:
    return [f"{f.name} {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}" for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)]


def checkpoint_model_config(path: str | os.PathLike) -> tuple[str, Any]:
    """The registered name and validated config a checkpoint was saved with (from model.json; no weights read)."""
    directory = checkpoint_dir(path)
    meta_path = directory / "model.json"
    meta = read_json(meta_path, "model config", ConfigError)
    if not isinstance(meta, dict):
        raise ConfigError(f"{meta_path}: expected a JSON object with 'name' and 'config'")
    _ensure_builtin()
    name = meta.get("name")
    if name not in _REGISTRY:
        raise ConfigError(f"{meta_path}: unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name][0]
    return name, from_dict(cls, saved_config(cls, meta.get("config", {})), str(meta_path))


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint directory (or its ``model.safetensors``); weights must match exactly.

    ``model.json`` must agree with the name and config stored inside ``model.safetensors`` (an edited
    model.json would otherwise build another network around the weights, e.g. another max_disp,
    and give wrong disparities without any error). Files saved before the config was stored there
    are accepted on model.json alone, with a warning.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    directory = checkpoint_dir(path)
    weights = directory / "model.safetensors"
    meta_path = directory / "model.json"
    name, config = checkpoint_model_config(directory)
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = (f.metadata() or {}).get("model")
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {weights} (corrupt or truncated?): {exc}") from None
    if stored is None:
        log.warning("%s carries no model config of its own (saved by an older version): trusting %s", weights, meta_path)
    else:
        try:
            stored_meta = json.loads(stored)
            stored_name = stored_meta["name"]
            cls = _REGISTRY[stored_name][0]
            stored_config = from_dict(cls, saved_config(cls, stored_meta.get("config", {})), f"{weights} metadata")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{weights}: unreadable model metadata ({exc})") from None
        if stored_name != name:
            raise ConfigError(f"{meta_path} says model '{name}' but {weights.name} was saved from '{stored_name}'; "
                              "model.json was edited or belongs to another checkpoint")
        diffs = _config_differences(config, stored_config)
        if diffs:
            raise ConfigError(f"{meta_path} does not match the config saved inside {weights.name} "
                              f"({'; '.join(diffs)}): model.json was edited or belongs to another checkpoint. "
                              "Restore it (the weights' own config is authoritative) or re-save the model")
    model = create_model(name, config)
    check_state_fits(model, state, str(weights))
    model.load_state_dict(state)
    return model


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], where: str,
                     may_lack: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigError` unless ``state`` has exactly ``model``'s keys and shapes (keys under
    the prefixes ``may_lack`` may be absent: they keep the model's own values)."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(may_lack))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"{where} does not fit model '{getattr(model, 'model_name', type(model).__name__)}' with this config: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
            f"{len(mismatched)} with other shapes (e.g. {mismatched[:2]}); was it saved from another model config?"
        )
    check_state_values(model, state, where)


def check_state_values(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`ConfigError` for weights that would give wrong disparities without any other error:
    integer tensors where the model has floats (a lossy conversion), NaN or inf values, negative BatchNorm
    running variances, or every weight zero."""
    own = model.state_dict()
    cast = [f"{k} ({state[k].dtype})" for k in state if k in own and own[k].is_floating_point()
            and not state[k].is_floating_point()]
    if cast:
        raise ConfigError(f"{where}: {len(cast)} tensor(s) are integers where the model has floating-point weights "
                          f"(e.g. {cast[0]}): a conversion that lost the values; use the original file")
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in floats.items()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise ConfigError(f"{where}: {sum(bad.values()):,} non-finite value(s) (NaN or inf) in {len(bad)} tensor(s) "
                          f"(e.g. {first}: {bad[first]:,}): a diverged training run or a damaged file")
    negative = [k for k, v in floats.items() if k.endswith("running_var") and bool((v < 0).any())]
    if negative:
        raise ConfigError(f"{where}: {len(negative)} BatchNorm running variance(s) are negative (e.g. {negative[0]}): "
                          "not a trained network's statistics; a damaged or edited file")
    weights = [v for k, v in floats.items() if not k.endswith(("running_mean", "running_var"))]
    if weights and not any(bool(v.any()) for v in weights):
        raise ConfigError(f"{where}: every weight is zero: not a trained network (an empty or wiped file)")


_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        import m2s_train.models.igev  # noqa: F401  (registers igev, igev-rt, igev-tiny)


__all__ = ["check_state_fits", "check_state_values", "checkpoint_model_config", "create_model", "describe", "list_models", "load_model", "model_config",
           "register_model", "save_model"]
