"""Files the project writes and reads back, one way for every package.

- Writes are atomic (a temporary file in the same directory, fsync, rename), so a reader or a
  killed process never sees half a file, and get the permissions the user's umask gives any new
  file (``tempfile.mkstemp`` would leave them 0600: a ROS node running as another user could
  not read the camera_info).
- :func:`staged_directory` does the same for a whole directory (a bag): it appears complete
  under its final name or not at all.
- JSON is strict: NaN and inf become ``null`` (bare ``NaN`` is not JSON, and a metric that could
  not be measured must not look like a number); reading names the file on any error.
- Arrays load with ``allow_pickle=False`` and must be numeric: an object array is refused, not
  unpickled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import DataError, Mono2StereoError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network file systems): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_file(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` to ``path`` via a temp file + fsync + rename; mode 0666 & ~umask like any new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_if_absent(path: str | os.PathLike, data: bytes) -> bool:
    """Create ``path`` with ``data`` atomically unless it exists (then leave it); True if this call made it.

    Safe when several processes race to create the same file: exactly one wins, none sees half of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively, numpy scalars included)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def dumps_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON text: non-finite numbers are ``null``, never ``NaN``."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``value`` as strict JSON (see :func:`dumps_json`) to ``path`` atomically, newline-terminated."""
    write_text_atomic(path, dumps_json(value, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file",
              error: type[Mono2StereoError] = DataError) -> Any:
    """Parse a JSON file; a missing, unreadable or corrupt file raises ``error`` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is corrupt (not valid JSON: {exc.msg} at line {exc.lineno}); "
                    "restore it or regenerate it") from None


def load_npy(path: str | os.PathLike, what: str = "array", error: type[Mono2StereoError] = DataError) -> np.ndarray:
    """A numeric ``.npy`` array (never unpickled); a corrupt, object or non-numeric file raises ``error``."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise error(f"{what} {path} holds Python objects (an object-dtype array); refused to unpickle it: "
                        "save a numeric array (np.save(path, a.astype(np.float32)))") from None
        raise error(f"{what} {path} is corrupt or not a .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise error(f"{what} {path} is an .npz archive, expected a single .npy array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise error(f"{what} {path} has dtype {array.dtype}; expected a numeric array")
    return array


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a staging name and move it to ``final`` only when the block succeeds.

    Yields a path (not yet created) whose *name* is ``final``'s, inside a hidden staging folder
    next to it, so tools that name files after their directory (rosbag2) write the right names.
    On any exception, and on Ctrl-C, the staged directory is removed and ``final`` never appears.
    ``final`` must not exist.
    """
    final = Path(final)
    if final.exists():
        raise DataError(f"{final} exists: choose a new name (it is never overwritten)")
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.{secrets.token_hex(4)}.partial"
    stage.mkdir()
    try:
        yield stage / final.name
        if final.exists():
            raise DataError(f"{final} appeared while it was being written; the new copy was discarded")
        os.rename(stage / final.name, final)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def claim_output_file(path: str | os.PathLike, *, overwrite: bool, flag: str) -> None:
    """Refuse to replace an existing output file unless ``overwrite`` (the flag that names it in the
    message: ``--onnx``). With ``overwrite`` the old file stays until the new one is complete
    (written atomically by the caller)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another name")


def claim_report_dir(out: str | os.PathLike, *, overwrite: bool, markers: tuple[str, ...]) -> None:
    """The rule of every report directory (``--out``): a new or empty one is used; one that holds a
    report of this tool (any of ``markers``, at most two levels down) is refused unless ``overwrite``,
    which deletes it first, so none of its old figures is left beside the new metrics; a directory
    holding anything else is never deleted."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    found = [p for m in markers for p in (*out.glob(m), *out.glob(f"*/{m}"))]
    if not found:
        raise DataError(f"--out {out} exists and holds files that are not a report of this tool: choose a new or "
                        "empty directory (it is never deleted)")
    if not overwrite:
        raise DataError(f"--out {out} holds an earlier report ({found[0].relative_to(out)}): pass --overwrite to "
                        "delete it and write the new one, or choose another --out")
    shutil.rmtree(out)


__all__ = ["claim_output_file", "claim_report_dir", "dumps_json", "json_safe", "load_npy", "read_json", "staged_directory",
           "write_bytes_atomic", "write_bytes_if_absent", "write_json_atomic", "write_text_atomic"]
