"""Stereo calibration from chessboard image pairs, rectification, and the calibration report.

Pipeline: pair left/right files by the part their glob wildcards match -> find chessboard
corners (sub-pixel refined) in both views -> calibrate each camera -> ``stereoCalibrate``
(intrinsics refined jointly) -> ``stereoRectify`` -> report per-pair and overall RMS
reprojection error and the rectified epipolar error |y_L - y_R| of matched corners.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from calib.camera import StereoCamera
from calib.errors import CalibrationError
from calib.image_io import read_gray

log = logging.getLogger(__name__)

MIN_PAIRS = 3
MAX_CORNERS = (200, 200)  # inner corners per side: larger is a typo, and would only allocate
SQUARE_RANGE_M = (1e-4, 1.0)  # 0.1 mm .. 1 m chessboard squares

DEFAULT_MAX_RMS_PX = 1.0
DEFAULT_MAX_EPIPOLAR_PX = 1.0  # mean |y_L - y_R| after rectification
FOCAL_RANGE = (0.1, 20.0)  # focal length / image width: ~170 deg fisheye .. a long telephoto
BASELINE_RANGE_M = (1e-3, 10.0)


@dataclass(frozen=True)
class Board:
    """A chessboard target: inner-corner grid (columns x rows) and square size in metres."""

    cols: int
    rows: int
    square_m: float

    @classmethod
    def parse(cls, pattern: str, square_m: float) -> Board:
        """From ``"9x6"`` (inner corners per row x per column) and the square size in metres."""
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", pattern)
        if not match:
            raise CalibrationError(f"board must look like 9x6 (inner corners), got '{pattern}'")
        cols, rows = int(match.group(1)), int(match.group(2))
        if cols < 2 or rows < 2 or cols == rows:
            raise CalibrationError(
                f"board {cols}x{rows}: need at least 2x2 inner corners and cols != rows "
                "(a square grid makes the orientation ambiguous)"
            )
        if cols > MAX_CORNERS[0] or rows > MAX_CORNERS[1]:
            raise CalibrationError(f"board {cols}x{rows}: more than {MAX_CORNERS[0]}x{MAX_CORNERS[1]} inner corners "
                                   "is not a real chessboard; --board counts inner corners, e.g. 9x6")
        if not np.isfinite(square_m) or not SQUARE_RANGE_M[0] <= square_m <= SQUARE_RANGE_M[1]:
            raise CalibrationError(f"square size must be a length in metres in [{SQUARE_RANGE_M[0]:g}, "
                                   f"{SQUARE_RANGE_M[1]:g}], got {square_m} (25 mm is --square 0.025)")
        return cls(cols, rows, float(square_m))

    @property
    def pattern_size(self) -> tuple[int, int]:
        return (self.cols, self.rows)

    def object_points(self) -> np.ndarray:
        """Nx3 float32 corner positions on the board plane (z = 0), metres, row-major like OpenCV."""
        grid = np.mgrid[0 : self.cols, 0 : self.rows].T.reshape(-1, 2)
        points = np.zeros((grid.shape[0], 3), dtype=np.float32)
        points[:, :2] = grid * self.square_m
        return points


def _glob_key_regex(pattern: str) -> re.Pattern[str]:
    """A regex over basenames that captures what the pattern's wildcards match."""
    name = Path(pattern).name
    parts = re.split(r"(\*|\?|\[[^\]]*\])", name)
    regex = "".join(
        f"({fnmatch.translate(p)[4:-3]})" if i % 2 else re.escape(p) for i, p in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


def pair_image_files(left_glob: str, right_glob: str) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair ``left*.jpg`` with ``right*.jpg`` by what the wildcards match (``left07`` <-> ``right07``).

    Returns the sorted pairs and the files that found no partner.
    """
    sides = []
    for pattern in (left_glob, right_glob):
        files = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        if not files:
            raise CalibrationError(f"no files match '{pattern}'")
        key = _glob_key_regex(pattern)
        keyed: dict[str, Path] = {}
        for f in files:
            m = key.match(f.name)
            keyed["".join(m.groups()) if m else f.name] = f
        sides.append(keyed)
    left, right = sides
    pairs = [(left[k], right[k]) for k in sorted(left.keys() & right.keys())]
    unpaired = sorted([left[k] for k in left.keys() - right.keys()] + [right[k] for k in right.keys() - left.keys()])
    return pairs, unpaired


_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.01)
SAME_POSE_PX = 1.0  # mean corner distance below which two views show the same board pose


def _same_pose(a: np.ndarray, b: np.ndarray) -> bool:
    """Two detections of the board at (nearly) the same place: a duplicate view adds no constraint, and
    a set of duplicates makes the calibration degenerate (its result then depends on the OpenCV version)."""
    return float(np.linalg.norm(a.reshape(-1, 2) - b.reshape(-1, 2), axis=1).mean()) < SAME_POSE_PX


def find_corners(gray: np.ndarray, board: Board) -> np.ndarray | None:
    """Chessboard inner corners with sub-pixel refinement, Nx1x2 float32, or None if not found."""
    found, corners = cv2.findChessboardCorners(
        gray, board.pattern_size, flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    )
    if not found:
        return None
    refined = cv2.cornerSubPix(gray, corners, (11, 11), (-1, -1), _SUBPIX_CRITERIA)
    # OpenCV 4 returns Nx1x2, OpenCV 5 may return Nx2: keep one layout for callers.
    return np.ascontiguousarray(refined, dtype=np.float32).reshape(-1, 1, 2)


@dataclass
class PairReport:
    left: str
    right: str
    rms_left_px: float
    rms_right_px: float
    epipolar_mean_px: float
    epipolar_max_px: float


@dataclass
class CalibrationReport:
    image_size: tuple[int, int]
    board: dict[str, Any]
    pairs_used: int
    rms_px: float
    epipolar_mean_px: float
    epipolar_max_px: float
    focal_px: float
    baseline_m: float
    pairs: list[PairReport] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    opencv_version: str = cv2.__version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epipolar_errors(camera: StereoCamera, left_corners: np.ndarray, right_corners: np.ndarray) -> np.ndarray:
    """|y_L - y_R| (pixels) of matched corners after rectification, shape (N,)."""
    l, r = camera.left, camera.right
    ul = cv2.undistortPoints(left_corners.reshape(-1, 1, 2), l.K, l.D, R=l.R, P=l.P)
    ur = cv2.undistortPoints(right_corners.reshape(-1, 1, 2), r.K, r.D, R=r.R, P=r.P)
    return np.abs(ul[:, 0, 1] - ur[:, 0, 1])


def calibrate_stereo(
    left_glob: str,
    right_glob: str,
    board: Board,
    alpha: float = 0.0,
    progress: bool = True,
) -> tuple[StereoCamera, CalibrationReport]:
    """Calibrate a stereo pair from chessboard images.

    Pairs whose board is not found in both views, pairs that repeat an earlier board pose, and
    files without a partner are skipped with a warning and listed in ``report.skipped``. Unreadable files, fewer than
    :data:`MIN_PAIRS` usable pairs, image size mismatches and a non-positive baseline raise
    :class:`CalibrationError` / :class:`DataError`.

    Args:
        alpha: ``stereoRectify`` free scaling: 0 keeps only valid pixels, 1 keeps all source pixels.
    """
    pairs, unpaired = pair_image_files(left_glob, right_glob)
    skipped = [{"file": str(p), "reason": "no matching file on the other side"} for p in unpaired]
    for item in skipped:
        log.warning("skipping %s: %s", item["file"], item["reason"])

    obj = board.object_points()
    used: list[tuple[Path, Path]] = []
    corners_l: list[np.ndarray] = []
    corners_r: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    size_source: Path | None = None
    for lp, rp in tqdm(pairs, desc="chessboard corners", unit="pair", disable=not progress):
        gl, gr = read_gray(lp), read_gray(rp)
        cl, cr = find_corners(gl, board), find_corners(gr, board)
        if cl is None or cr is None:
            where = " and ".join(str(p) for p, c in ((lp, cl), (rp, cr)) if c is None)
            reason = f"{board.cols}x{board.rows} board not found in {where}"
            log.warning("skipping pair %s / %s: %s", lp.name, rp.name, reason)
            skipped.append({"file": f"{lp} | {rp}", "reason": reason})
            continue
        if gl.shape != gr.shape:
            raise CalibrationError(
                f"left/right size mismatch: {lp} is {gl.shape[1]}x{gl.shape[0]}, {rp} is {gr.shape[1]}x{gr.shape[0]}"
            )
        this_size = (gl.shape[1], gl.shape[0])
        if size is None:
            size, size_source = this_size, lp
        elif this_size != size:
            raise CalibrationError(
                f"image size mismatch within the set: {lp} is {this_size[0]}x{this_size[1]}, "
                f"{size_source} is {size[0]}x{size[1]}"
            )
        twin = next((k for k, (ol, orr) in enumerate(zip(corners_l, corners_r))
                     if _same_pose(cl, ol) and _same_pose(cr, orr)), None)
        if twin is not None:
            reason = f"same board pose as {used[twin][0].name} / {used[twin][1].name} (corners within {SAME_POSE_PX:g} px)"
            log.warning("skipping pair %s / %s: %s", lp.name, rp.name, reason)
            skipped.append({"file": f"{lp} | {rp}", "reason": reason})
            continue
        used.append((lp, rp))
        corners_l.append(cl)
        corners_r.append(cr)

    if len(used) < MIN_PAIRS:
        raise CalibrationError(
            f"only {len(used)} usable pair(s) with the {board.cols}x{board.rows} board in both views; "
            f"need at least {MIN_PAIRS} (check --board, the globs, and that the whole board is visible)"
        )
    assert size is not None
    objs = [obj] * len(used)
    _, K1, D1, _, _ = cv2.calibrateCamera(objs, corners_l, size, None, None)
    _, K2, D2, _, _ = cv2.calibrateCamera(objs, corners_r, size, None, None)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-6)
    rms, K1, D1, K2, D2, R, T, _, _, _, _, per_view = cv2.stereoCalibrateExtended(
        objs, corners_l, corners_r, K1, D1, K2, D2, size, None, None,
        flags=cv2.CALIB_USE_INTRINSIC_GUESS, criteria=criteria,
    )
    if not np.all(np.isfinite(T)) or float(T[0, 0]) >= 0:
        baseline = -float(T[0, 0])
        raise CalibrationError(
            f"calibrated baseline is {baseline:.4g} m (non-positive): the right camera is not to the right "
            "of the left one; are --left and --right swapped?"
        )
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(
        K1, D1, K2, D2, size, R, T, flags=cv2.CALIB_ZERO_DISPARITY, alpha=alpha
    )
    camera = StereoCamera.from_opencv(size, K1, D1, R1, P1, K2, D2, R2, P2)

    pair_reports = []
    all_epi = []
    for (lp, rp), cl, cr, errs in zip(used, corners_l, corners_r, per_view):
        epi = epipolar_errors(camera, cl, cr)
        all_epi.append(epi)
        pair_reports.append(PairReport(str(lp), str(rp), float(errs[0]), float(errs[1]),
                                       float(epi.mean()), float(epi.max())))
    epi_all = np.concatenate(all_epi)
    report = CalibrationReport(
        image_size=size,
        board={"cols": board.cols, "rows": board.rows, "square_m": board.square_m},
        pairs_used=len(used),
        rms_px=float(rms),
        epipolar_mean_px=float(epi_all.mean()),
        epipolar_max_px=float(epi_all.max()),
        focal_px=camera.focal_px,
        baseline_m=camera.baseline_m,
        pairs=pair_reports,
        skipped=skipped,
    )
    return camera, report


def quality_problems(camera: StereoCamera, report: CalibrationReport, max_rms_px: float = DEFAULT_MAX_RMS_PX,
                     max_epipolar_px: float = DEFAULT_MAX_EPIPOLAR_PX) -> list[str]:
    """What makes a calibration untrustworthy (empty when it passes the gate).

    Checks: every matrix finite; RMS reprojection error <= ``max_rms_px``; mean rectified
    epipolar error <= ``max_epipolar_px`` (rows of the two views must line up, or stereo
    matching fails everywhere; degenerate views, e.g. the same board pose in every pair, show
    here); focal length within :data:`FOCAL_RANGE` times the image width; baseline within
    :data:`BASELINE_RANGE_M`.
    """
    problems = []
    w, _ = report.image_size
    values = [report.rms_px, report.focal_px, report.baseline_m, report.epipolar_mean_px]
    if not all(np.isfinite(v) for v in values) or not all(
            np.all(np.isfinite(getattr(c, m))) for c in (camera.left, camera.right) for m in "KDRP"):
        problems.append("the solution is degenerate (NaN/inf in the result)")
        return problems
    if report.rms_px > max_rms_px:
        problems.append(f"RMS reprojection error {report.rms_px:.3g} px > {max_rms_px:g} px (blurred or mis-detected "
                        "corners, a wrong --board/--square, or unsynchronised pairs)")
    if report.epipolar_mean_px > max_epipolar_px:
        problems.append(f"rectified epipolar error {report.epipolar_mean_px:.3g} px mean > {max_epipolar_px:g} px "
                        "(rows do not line up: too few distinct board poses, or pairs not taken at the same time)")
    lo, hi = FOCAL_RANGE
    if not lo * w <= report.focal_px <= hi * w:
        problems.append(f"focal length {report.focal_px:.4g} px is implausible for a {w} px wide image "
                        f"(expected {lo * w:.0f}..{hi * w:.0f} px)")
    lo, hi = BASELINE_RANGE_M
    if not lo <= report.baseline_m <= hi:
        problems.append(f"baseline {report.baseline_m:.4g} m is implausible (expected {lo:g}..{hi:g} m; is --square "
                        "in metres?)")
    return problems


class Rectifier:
    """Rectifies raw image pairs of one calibrated camera (maps computed once)."""

    def __init__(self, camera: StereoCamera, interpolation: int = cv2.INTER_LINEAR) -> None:
        self.camera = camera
        self.interpolation = interpolation
        self._maps = (camera.left.rectification_maps(cv2.CV_16SC2), camera.right.rectification_maps(cv2.CV_16SC2))

    def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, h = self.camera.image_size
        out = []
        for side, image, (m1, m2) in (("left", left, self._maps[0]), ("right", right, self._maps[1])):
            if image.shape[:2] != (h, w):
                raise CalibrationError(
                    f"{side} image is {image.shape[1]}x{image.shape[0]}, calibration is for {w}x{h}"
                )
            out.append(cv2.remap(image, m1, m2, self.interpolation))
        return out[0], out[1]
