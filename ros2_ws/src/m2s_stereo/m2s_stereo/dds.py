"""The DDS profile for large images that the node ships and uses by default.

See ``fastdds_large_images.xml`` beside this file for why (large best-effort images between
processes are lost with the default Fast DDS transports) and what it sets. The environment
variable must be set before the process creates its first DDS participant (``rclpy.init``), in
*every* process of the graph that sends large images: the node sets it for itself
(:func:`use_large_image_profile`), the launch file for all it launches, and the camera driver's
environment needs it too (README: "Frames that arrive").
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

PROFILE = Path(__file__).with_name("fastdds_large_images.xml")
# Fast DDS 3 (Kilted, Rolling) reads only FASTDDS_DEFAULT_PROFILES_FILE (and its rmw warns when FASTRTPS_ is set);
# Fast DDS 2 (Humble 2.6, Jazzy 2.14) reads only FASTRTPS_DEFAULT_PROFILES_FILE: measured on the Jazzy wheels
# (Fast DDS 2.14.5), FASTDDS_ alone left the default 512 KiB segment, i.e. no profile at all.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3, Fast DDS 2
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
OPT_OUT = "M2S_DDS_PROFILE"  # "none": leave the DDS configuration alone


def uses_fast_dds(environ: MutableMapping[str, str] = os.environ) -> bool:
    """True when the RMW is Fast DDS (the default of Humble, Jazzy and Kilted)."""
    return environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps")


def fast_dds_major(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Fast DDS's major version in this process: from ROS_DISTRO (a sourced ROS install: its libraries come
    first), else from the PyPI ROS wheels installed (ros-fastdds 3.x, ros-fastrtps 2.x); None when unknown."""
    distro = environ.get("ROS_DISTRO", "").lower()
    if distro:
        return 2 if distro in FAST_DDS_2_DISTROS else 3
    import importlib.metadata as md

    for dist in ("ros-fastdds", "ros-fastrtps"):
        try:
            return int(md.version(dist).split(".")[0])
        except (md.PackageNotFoundError, ValueError):
            continue
    return None


def profile_variables(environ: MutableMapping[str, str] = os.environ) -> tuple[str, ...]:
    """The variable(s) this process's Fast DDS reads its profiles file from (both when the version is unknown)."""
    major = fast_dds_major(environ)
    if major is None:
        return PROFILE_VARIABLES
    return PROFILE_VARIABLES[1:] if major < 3 else PROFILE_VARIABLES[:1]


def profile_in_use(environ: MutableMapping[str, str] = os.environ) -> bool:
    """True when this process's Fast DDS loads the large-image profile (its shared-memory segments need room)."""
    return uses_fast_dds(environ) and any(environ.get(v) == str(PROFILE) for v in profile_variables(environ))


def ignored_profile_variable(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Why a profiles file that is set is not loaded: it is in the variable this Fast DDS does not read, and the one
    it reads is empty (e.g. FASTDDS_DEFAULT_PROFILES_FILE on Jazzy). None when there is nothing to say."""
    if not uses_fast_dds(environ):
        return None
    read = profile_variables(environ)
    if any(environ.get(v) for v in read):
        return None
    for v in PROFILE_VARIABLES:
        if v not in read and environ.get(v):
            return (f"{v} is set ({environ[v]}) but this Fast DDS (major version {fast_dds_major(environ)}) reads "
                    f"{read[0]} only: that profile is not loaded. Set {read[0]} to the same file, in the camera "
                    "driver's environment too")
    return None


def profile_environment(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to set so Fast DDS loads :data:`PROFILE`: empty when the user chose a profile
    already (in the variable this Fast DDS reads), opted out (``M2S_DDS_PROFILE=none``) or uses another RMW."""
    if environ.get(OPT_OUT, "").lower() == "none" or not uses_fast_dds(environ):
        return {}
    names = profile_variables(environ)
    if any(environ.get(v) for v in names):
        return {}
    return {name: str(PROFILE) for name in names}


def use_large_image_profile(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set :func:`profile_environment` in ``environ`` (call before ``rclpy.init``); returns the profile
    path when it was set, None when left alone."""
    wanted = profile_environment(environ)
    environ.update(wanted)
    return str(PROFILE) if wanted else None


# -- room for the shared-memory transport ---------------------------------------------------------
# The profile gives every process that loads it (every participant) a 16 MiB segment in /dev/shm, a
# tmpfs, allocated whole when the participant is created. A process that finds no room for its segment
# has no shared-memory transport: its large images go over UDP in fragments and are lost (the reason for
# the profile). Measured with the camera started last: a 40 MiB /dev/shm (room for two segments) gave the
# node 7 of 60 1280x720 pairs at 5 Hz, its input rate falling 5 -> 1 -> 0.6 fps; a 64 MiB one holding two
# segments of killed processes, 1 of 60; 64 MiB and more, 60 of 60. A container's /dev/shm is 64 MB unless
# told otherwise, and segments of processes that were killed stay until someone removes them.
SHM_DIR = Path("/dev/shm")
SEGMENT_BYTES = 17_564_192  # the profile's 16 MiB segment as Fast DDS allocates it (measured), per process
_SEGMENT_LOCK = re.compile(r"^fast(?:dds|rtps)_[0-9a-f]{16}_el$")  # fastrtps_: Fast DDS 2 (Humble, Jazzy); hex ids
_PORT_LOCK = re.compile(r"^fast(?:dds|rtps)_port\d{1,5}_(?:el|sl)$")


@dataclass
class ShmReport:
    free_bytes: int
    zombie_segments: int  # segments of processes that died without removing them
    zombie_bytes: int
    live_segments: int = 0  # segments of running processes

    @property
    def free_mib(self) -> float:
        return self.free_bytes / 2**20


def _locked(path: Path) -> bool:
    """True while some process holds a lock on ``path``: Fast DDS holds a BSD ``flock`` on a segment's
    ``_el`` file while its owner lives (``fastdds shm clean`` tests the same way; a POSIX ``lockf`` test
    would not see that lock and call every live segment dead)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # unreadable: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def shm_report(shm_dir: Path = SHM_DIR) -> ShmReport | None:
    """Free space of ``shm_dir`` and the Fast DDS segments in it whose owners are gone (None: no such dir)."""
    try:
        st = os.statvfs(shm_dir)
        names = os.listdir(shm_dir)
    except OSError:
        return None
    zombies, live = [], []
    for n in names:
        if _SEGMENT_LOCK.match(n):
            (live if _locked(shm_dir / n) else zombies).append(shm_dir / n[:-3])
    zombie_bytes = 0
    for z in zombies:
        try:
            zombie_bytes += z.stat().st_blocks * 512
        except OSError:
            pass
    return ShmReport(st.f_bavail * st.f_frsize, len(zombies), zombie_bytes, len(live))


def shm_problem(report: ShmReport | None, segments: int = 1) -> str | None:
    """Why large images between processes will be lost for lack of room in /dev/shm for ``segments`` more
    segments (a process about to start: its own and one more, e.g. the camera's; a running one: one more,
    for the next process that starts or restarts), or None."""
    if report is None or report.free_bytes >= segments * SEGMENT_BYTES:
        return None
    stale = (f" ({report.zombie_bytes / 2**20:.0f} MiB more is held by {report.zombie_segments} segment(s) of Fast DDS "
             "processes that died: 'fastdds shm clean' removes them)") if report.zombie_segments else ""
    return (f"{SHM_DIR} has {report.free_mib:.0f} MiB free{stale}: every process that loads the large-image DDS profile "
            f"takes {SEGMENT_BYTES / 2**20:.1f} MiB there when it starts ({report.live_segments} segments there now), and one that "
            "finds no room loses its large images (a camera driver's: the node gets none). Free space in /dev/shm "
            "(a container: docker run --shm-size 256m), or export the profile only for the camera driver and the node")


def clean_zombie_segments(shm_dir: Path = SHM_DIR, refused: list[str] | None = None) -> int:
    """Remove the shared-memory segments and ports of Fast DDS processes that died (their lock files are not
    held): what ``fastdds shm clean`` does, without the datasharing segments. Returns the segments removed.
    A file this process may not remove (another user's, in a shared /dev/shm) is left and named in ``refused``."""
    removed = 0
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return 0

    def unlink(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # PermissionError: a driver run as root left it; not ours to remove
            if refused is not None:
                refused.append(f"{path} ({exc.strerror or type(exc).__name__})")
            return False
        return True

    for name in names:
        lock = shm_dir / name
        if _SEGMENT_LOCK.match(name) and not _locked(lock):
            done = [unlink(path) for path in (shm_dir / name[:-3], lock)]
            removed += all(done)
        elif _PORT_LOCK.match(name) and not _locked(lock):
            base = shm_dir / name[:-3]
            for path in (base, shm_dir / f"{base.name}_el", shm_dir / f"{base.name}_sl"):
                unlink(path)
    return removed


def make_room_for_shm(shm_dir: Path = SHM_DIR) -> tuple[str | None, int]:
    """Before the first participant of a process that uses the profile: when ``shm_dir`` lacks room for its
    segment and one more, remove the segments of dead processes (they are nobody's), then say what is still
    wrong (files of dead processes it may not remove included). Returns (problem or None, segments removed)."""
    report = shm_report(shm_dir)
    removed = 0
    refused: list[str] = []
    if shm_problem(report, 2) is not None and report is not None and report.zombie_segments:
        removed = clean_zombie_segments(shm_dir, refused)
        report = shm_report(shm_dir)
    problem = shm_problem(report, 2)
    if refused:
        skipped = (f"left {len(refused)} file(s) of dead Fast DDS processes that this user may not remove (e.g. "
                   f"{refused[0]}): another user's (a driver run as root?); 'sudo fastdds shm clean' removes them")
        problem = f"{problem}; {skipped}" if problem else skipped
    return problem, removed


__all__ = ["OPT_OUT", "PROFILE", "PROFILE_VARIABLES", "SEGMENT_BYTES", "ShmReport", "clean_zombie_segments",
           "fast_dds_major", "ignored_profile_variable", "make_room_for_shm", "profile_environment", "profile_in_use",
           "profile_variables", "shm_problem", "shm_report", "use_large_image_profile", "uses_fast_dds"]
