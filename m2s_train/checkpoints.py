"""Training checkpoints on disk: written whole or not at all, resumed from the newest intact one.

Layout of a run directory::

    checkpoints/step_00001000/   model.safetensors, model.json, state.pt, train.json
    checkpoints/latest           name of the newest checkpoint (a hint; the step_* folders decide)
    checkpoints/unusable/        checkpoints a resume found damaged, moved aside (never deleted)
    tensorboard/, train_summary.json

Rules that keep a run of days from being lost:
- a checkpoint is built in a temporary folder (every file fsynced) and renamed into place, so a
  kill leaves the previous checkpoints and at worst a stale temporary folder;
- a new run refuses a directory that already holds one (``--resume`` continues it,
  ``--overwrite`` deletes the old run's own files -- ``step_*`` checkpoints, ``latest``, TensorBoard
  event files, the summary -- once the new run's inputs have loaded, so two runs are never mixed and
  nothing else in the folder is touched; never the ``--init`` the new run reads);
- ``--resume`` takes the newest checkpoint that fully loads (weights against their config,
  optimizer state, train.json); damaged newer ones are reported and moved to ``unusable/``; when
  none loads it refuses instead of starting again from step 0 over the old run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calib.errors import Mono2StereoError
from calib.safe_files import read_json, refuse_dangerous_target, write_json_atomic, write_text_atomic
from m2s_train.errors import ConfigError
from m2s_train.models import load_model, save_model

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(ConfigError):
    """A checkpoint cannot be used (damaged, foreign or refused); the message says which file and why."""


@dataclass
class Checkpoint:
    """A checkpoint that loaded completely."""

    path: Path
    step: int
    config: dict[str, Any]
    model: torch.nn.Module
    state: dict[str, Any]  # optimizer, scheduler, scaler, rng


def step_dirs(out: Path) -> list[Path]:
    """The run's ``checkpoints/step_*`` folders, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def holds_run(out: Path) -> bool:
    """True when ``out`` already has checkpoints or a finished run's summary."""
    return bool(step_dirs(out)) or (out / "checkpoints" / "latest").exists() or (out / "train_summary.json").exists()


def check_run_dir(out: Path, *, resume: bool, overwrite: bool, init: str | os.PathLike | None = None) -> None:
    """Refuse to start a new run over an old one unless asked (checks only; call it before slow set-up)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: resume a run, or discard it and start anew")
    if resume and holds_run(out) and not step_dirs(out):
        # a 'latest' pointer or a summary, but no step_* left (deleted by hand, a full disk): starting again
        # from step 0 would silently replace the old run's train_summary.json
        traces = [n for n in ("checkpoints/latest", "train_summary.json") if (out / n).exists()]
        raise ConfigError(f"--resume: {out} holds a run ({', '.join(traces)}) but no checkpoint is left to resume "
                          "from; pass --overwrite to discard it and start again, or choose a new --out")
    if not resume and not overwrite and holds_run(out):
        newest = step_dirs(out)
        what = f"checkpoints up to {newest[-1].name}" if newest else "a finished run"
        raise ConfigError(f"{out} already holds a training run ({what}); pass --resume to continue it, "
                          "--overwrite to delete it and start again, or choose a new --out")
    if overwrite and holds_run(out):
        try:
            refuse_dangerous_target(out)
        except Mono2StereoError as exc:
            raise ConfigError(f"--overwrite would delete the old run's files, but {exc}") from None
        source = Path(init).resolve() if init else None
        if source is not None and any(f.resolve() == source or source in f.resolve().parents
                                      for f in owned_run_files(out)):
            raise ConfigError(f"--init {init} is a checkpoint of the run in {out} that --overwrite would delete: copy "
                              "it out of the run first, or write the new run to another --out")


_RUN_FILES = ("model.safetensors", "model.json", "state.pt", "train.json", "model_card.json", "MODEL_CARD.md")


def owned_run_files(out: Path) -> list[Path]:
    """The files a training run wrote into ``out`` (what ``--overwrite`` deletes): the ``step_*`` checkpoints'
    files (and unfinished ``.tmp_step_*`` ones), ``checkpoints/latest``, TensorBoard event files and
    ``train_summary.json``. A user's ``checkpoints/my_best/`` or ``tensorboard/notes.txt`` is not among them."""
    files = []
    root = out / "checkpoints"
    if root.is_dir() and not root.is_symlink():
        for d in root.iterdir():
            if d.is_dir() and not d.is_symlink() and (_STEP_DIR.fullmatch(d.name) or re.fullmatch(r"\.tmp_step_\d+", d.name)):
                files += [d / n for n in _RUN_FILES if (d / n).is_file() and not (d / n).is_symlink()]
        if (root / "latest").is_file():
            files.append(root / "latest")
    board = out / "tensorboard"
    if board.is_dir() and not board.is_symlink():
        files += [f for f in board.glob("events.out.tfevents.*") if f.is_file() and not f.is_symlink()]
    if (out / "train_summary.json").is_file():
        files.append(out / "train_summary.json")
    return files


def discard_old_run(out: Path, *, main: bool) -> None:
    """``--overwrite``: delete the old run's own files (:func:`owned_run_files`), and the folders that leaves
    empty; call it once the new run's inputs have loaded. Main process only."""
    files = owned_run_files(out)
    if not main or not files:
        return
    log.warning("--overwrite: deleting the previous run's %d files (checkpoints, TensorBoard logs, summary) in %s; "
                "nothing else in it", len(files), out)
    for f in files:
        f.unlink(missing_ok=True)
    for folder in sorted({f.parent for f in files} | {out / "tensorboard", out / "checkpoints"},
                         key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def _fsync_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save_checkpoint(out: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                    config: dict[str, Any], rng: dict[str, torch.Tensor], keep: int,
                    card: dict[str, Any] | None = None) -> Path:
    """``checkpoints/step_N/`` (model.safetensors, model.json, state.pt, train.json, and the model card of
    the weights it started from, if any) via a temp dir + rename; keeps the newest ``keep`` checkpoints."""
    if keep < 1:
        raise ConfigError(f"keep_checkpoints must be >= 1, got {keep}")
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng}, tmp / "state.pt")
    write_json_atomic(tmp / "train.json", {"step": step, "config": config})
    if card is not None:
        from m2s_train.models.published import write_card

        write_card(tmp, {**card, "training": {**card.get("training", {}), "steps": step}})
    _fsync_files(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text_atomic(root / "latest", final.name + "\n")
    for old in step_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, if it exists (None for a dangling pointer)."""
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() and _STEP_DIR.fullmatch(path.name) else None


def load_training_state(path: Path) -> dict[str, Any]:
    """``state.pt`` with ``torch.load(weights_only=True)``: tensors and plain containers only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refused to unpickle {path}: it holds Python objects other than tensors and plain "
                              f"containers (weights_only=True); {str(exc).splitlines()[0][:120]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or {"step", "optimizer", "scheduler", "scaler", "rng"} - set(state):
        raise CheckpointError(f"{path} is not a m2s-train training state (expected step, optimizer, scheduler, "
                              "scaler and rng)")
    return state


def read_checkpoint(path: Path) -> Checkpoint:
    """Load every part of a checkpoint, or raise :class:`CheckpointError` naming the damaged part."""
    meta = read_json(path / "train.json", "training metadata", CheckpointError)
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path / 'train.json'} lacks 'step' and 'config'")
    try:
        model = load_model(path)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    state = load_training_state(path / "state.pt")
    if int(state["step"]) != meta["step"]:
        raise CheckpointError(f"{path}: state.pt is at step {int(state['step'])} but train.json says {meta['step']}")
    return Checkpoint(path, meta["step"], meta["config"], model, state)


def find_resume_checkpoint(out: Path, *, main: bool = True) -> Checkpoint | None:
    """The newest checkpoint of ``out`` that loads completely; damaged newer ones are reported and
    (by the main process) moved to ``checkpoints/unusable/``. None when the run has no checkpoint;
    :class:`CheckpointError` when it has some but none is intact."""
    candidates = step_dirs(out)
    pointer = out / "checkpoints" / "latest"
    if pointer.is_file() and latest_checkpoint(out) is None:
        log.warning("%s names '%s', which does not exist; looking for the newest intact checkpoint instead",
                    pointer, pointer.read_text().strip())
    problems: list[tuple[Path, str]] = []
    chosen = None
    for path in reversed(candidates):
        try:
            chosen = read_checkpoint(path)
            break
        except CheckpointError as exc:
            problems.append((path, str(exc)))
            log.warning("checkpoint %s is unusable: %s", path.name, exc)
    if candidates and chosen is None:
        raise CheckpointError(
            f"--resume: none of the {len(candidates)} checkpoint(s) in {out / 'checkpoints'} is intact (newest: "
            f"{problems[0][1]}); nothing to resume from. Start a new --out, or --overwrite to discard them")
    if chosen is not None and problems:
        log.warning("resuming from %s (step %d) instead of the newer, damaged %s", chosen.path.name, chosen.step,
                    ", ".join(p.name for p, _ in problems))
        if main:
            aside = out / "checkpoints" / "unusable"
            aside.mkdir(exist_ok=True)
            for path, _ in problems:
                target = aside / path.name
                shutil.rmtree(target, ignore_errors=True)
                os.replace(path, target)
            write_text_atomic(out / "checkpoints" / "latest", chosen.path.name + "\n")
    return chosen


__all__ = ["Checkpoint", "CheckpointError", "check_run_dir", "discard_old_run", "find_resume_checkpoint", "holds_run", "latest_checkpoint",
           "load_training_state", "owned_run_files", "read_checkpoint", "save_checkpoint", "step_dirs"]
