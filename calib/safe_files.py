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


def claim_output_file(path: str | os.PathLike, *, overwrite: bool, flag: str,
                      companions: tuple[str | os.PathLike, ...] = (),
                      inputs: tuple[str | os.PathLike, ...] = ()) -> None:
    """Refuse to replace an existing output file, or one of the ``companions`` written with it (an ONNX's
    sidecar), unless ``overwrite`` (the flag that names it in the message: ``--onnx``). With ``overwrite``
    the old file stays until the new one is complete (written atomically by the caller); a directory in its
    place is never replaced (a link is replaced as a link: its target is not written)."""
    for given in inputs:
        source = Path(given).resolve()
        if _is_within(Path(path).resolve(), source):
            raise DataError(f"{flag} {path} is (or is inside) this command's own input {given}: choose another name")
    for target in (Path(path), *map(Path, companions)):
        if target.is_dir() and not target.is_symlink():
            raise DataError(f"{flag} {path}: {target} is a directory; it is never replaced: choose another name")
        if target.exists() and not overwrite:
            what = f"{flag} {path}" if target == Path(path) else f"{target} (written with {flag} {path})"
            raise DataError(f"{what} exists: pass --overwrite to replace it, or choose another name")


OUTPUT_MANIFEST = ".m2s-output.json"


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_dangerous_target(out: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = (),
                            flag: str = "--out") -> None:
    """The folders no command may delete from, whatever they hold: ``/``, the home directory, the working
    directory or one above it, a symlink (its target is someone else's), and a folder that holds (or is)
    one of the command's ``inputs``. Raises :class:`DataError`; deletes nothing."""
    out = Path(out)
    if out.is_symlink():
        raise DataError(f"{flag} {out} is a symbolic link (to {os.readlink(out)}): nothing is deleted through a link; "
                        "give the real directory, or a new one")
    real = out.resolve()
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor) or real == home or _is_within(cwd, real):
        what = "the root directory" if real == Path(real.anchor) else "your home directory" if real == home else \
            "the working directory" if real == cwd else "a directory above the working directory"
        raise DataError(f"{flag} {out} is {what}: a command never deletes from it; choose a new --out")
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).expanduser()
        if source.exists() and _is_within(source.resolve(), real):
            raise DataError(f"{flag} {out} holds this command's own input {given}: choose another --out (the input "
                            "is never deleted)")


class OwnedOutput:
    """The one rule of every output directory a command writes (``--out``), with or without ``--overwrite``.

    - A new or empty directory is used as it is.
    - A directory this command wrote earlier is recognised by its manifest (``.m2s-output.json``: the tool
      and the files it wrote). Without ``overwrite`` it is refused. With it, :meth:`clear` deletes exactly
      the files the manifest lists, and only when the caller has checked its inputs; anything else in the
      folder (a user's notes, a sub-folder) is kept.
    - A directory holding anything else (no manifest, another tool's manifest) is refused: nothing is
      deleted. So are the targets :func:`refuse_dangerous_target` names, when something would be deleted.

    :meth:`begin` records the files the run finds there (kept); :meth:`finish` writes the manifest of what
    the run added. A run killed before :meth:`finish` leaves a manifest marked incomplete, whose ``kept``
    list tells the next ``--overwrite`` what was there before it.
    """

    def __init__(self, out: str | os.PathLike, *, tool: str, overwrite: bool,
                 inputs: tuple[str | os.PathLike, ...] = (), flag: str = "--out") -> None:
        self.out, self.tool, self.flag = Path(out), tool, flag
        self.inputs = tuple(i for i in inputs if i is not None)
        self.to_delete: list[Path] = []
        self.kept: list[str] = []
        out = self.out
        if not out.exists() and not out.is_symlink():
            return
        if not out.is_dir():
            raise DataError(f"{flag} {out} exists and is not a directory")
        entries = [p.name for p in out.iterdir()]
        if not entries:
            return
        manifest = self._manifest()
        if manifest is None:
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise DataError(f"{flag} {out} holds files that {tool} did not write ({shown}): choose a new or empty "
                            f"directory (nothing in it is deleted)")
        if manifest.get("tool") != tool:
            raise DataError(f"{flag} {out} holds the output of {manifest.get('tool')!r}, not of {tool}: choose another "
                            "directory (nothing in it is deleted)")
        if not overwrite:
            raise DataError(f"{flag} {out} holds an earlier output of {tool}: pass --overwrite to replace it, or choose "
                            "another directory")
        refuse_dangerous_target(out, inputs=self.inputs, flag=flag)
        self.to_delete = self._owned(manifest)

    def _manifest(self) -> dict[str, Any] | None:
        path = self.out / OUTPUT_MANIFEST
        if not path.is_file() or path.is_symlink():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"{path} is unreadable or corrupt: {self.tool} cannot tell its own files from others; "
                            "delete the old output yourself or choose another directory") from None
        return manifest if isinstance(manifest, dict) else None

    def _owned(self, manifest: dict[str, Any]) -> list[Path]:
        """The files (never followed through links, never outside ``out``) the manifest says this tool wrote."""
        if manifest.get("complete"):
            names = [str(n) for n in manifest.get("written", [])]
        else:  # a killed run: everything that was not there before it
            kept = {str(n) for n in manifest.get("kept", [])}
            names = [n for n in _files_under(self.out) if n not in kept]
        root = self.out.resolve()
        owned = []
        for name in names:
            path = self.out / name
            if ".." in Path(name).parts or Path(name).is_absolute() or not _is_within(path.resolve().parent, root):
                continue  # a tampered manifest does not reach outside the folder
            if path.is_symlink() or path.is_file():
                owned.append(path)
        return owned

    def clear(self) -> None:
        """Delete the earlier output's files (call it once the inputs are checked); the manifest goes last, so
        an interrupted clear is finished by the next one. Folders left empty by it go too; others stay."""
        if not self.to_delete:
            return
        folders = {p.parent for p in self.to_delete}
        for path in self.to_delete:
            path.unlink(missing_ok=True)
        for folder in sorted(folders, key=lambda d: len(d.parts), reverse=True):
            while folder != self.out and _is_within(folder, self.out):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
                folder = folder.parent
        (self.out / OUTPUT_MANIFEST).unlink(missing_ok=True)
        self.to_delete = []

    def begin(self) -> None:
        """Clear the earlier output, then mark the folder as being written by this tool."""
        self.clear()
        self.out.mkdir(parents=True, exist_ok=True)
        self.kept = _files_under(self.out)
        write_json_atomic(self.out / OUTPUT_MANIFEST, {"tool": self.tool, "complete": False, "kept": self.kept})

    def finish(self) -> None:
        """Record every file the run wrote (all files now there but those kept from before)."""
        record_output(self.out, self.tool, kept=self.kept)


def record_output(folder: str | os.PathLike, tool: str, kept: list[str] | tuple[str, ...] = ()) -> None:
    """Write ``folder``'s manifest: every file in it but ``kept`` was written by ``tool`` (a complete output)."""
    folder = Path(folder)
    keep = set(kept)
    written = [n for n in _files_under(folder) if n not in keep]
    write_json_atomic(folder / OUTPUT_MANIFEST, {"tool": tool, "complete": True, "written": written})


def _files_under(folder: Path) -> list[str]:
    """Relative paths of the files (and links) under ``folder``, links not followed, the manifest excluded."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        found += [str((here / f).relative_to(folder)) for f in files]
        found += [str((here / d).relative_to(folder)) for d in dirs if (here / d).is_symlink()]
    return sorted(n for n in found if n != OUTPUT_MANIFEST)


__all__ = ["OUTPUT_MANIFEST", "OwnedOutput", "claim_output_file", "record_output", "refuse_dangerous_target", "dumps_json", "json_safe", "load_npy", "read_json", "staged_directory",
           "write_bytes_atomic", "write_bytes_if_absent", "write_json_atomic", "write_text_atomic"]
