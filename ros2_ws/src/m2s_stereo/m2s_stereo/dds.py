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
from collections.abc import MutableMapping
from pathlib import Path

PROFILE = Path(__file__).with_name("fastdds_large_images.xml")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Jazzy+, Humble
OPT_OUT = "M2S_DDS_PROFILE"  # "none": leave the DDS configuration alone


def uses_fast_dds(environ: MutableMapping[str, str] = os.environ) -> bool:
    """True when the RMW is Fast DDS (the default of Humble, Jazzy and Kilted)."""
    return environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps")


def profile_environment(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to set so Fast DDS loads :data:`PROFILE`: empty when the user chose a profile
    already, opted out (``M2S_DDS_PROFILE=none``) or uses another RMW."""
    if environ.get(OPT_OUT, "").lower() == "none" or not uses_fast_dds(environ):
        return {}
    if any(environ.get(v) for v in PROFILE_VARIABLES):
        return {}
    # Fast DDS >= 2.14 warns that the FASTRTPS_ name is deprecated when it is set; Humble's 2.6 knows only it
    distro = environ.get("ROS_DISTRO", "")
    names = PROFILE_VARIABLES[1:] if distro == "humble" else PROFILE_VARIABLES[:1]
    return {name: str(PROFILE) for name in names}


def use_large_image_profile(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set :func:`profile_environment` in ``environ`` (call before ``rclpy.init``); returns the profile
    path when it was set, None when left alone."""
    wanted = profile_environment(environ)
    environ.update(wanted)
    return str(PROFILE) if wanted else None


__all__ = ["OPT_OUT", "PROFILE", "PROFILE_VARIABLES", "profile_environment", "use_large_image_profile", "uses_fast_dds"]
