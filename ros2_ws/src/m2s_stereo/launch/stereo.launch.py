"""ros2 launch m2s_stereo stereo.launch.py engine_file_path:=/models/igev_rt.engine

Arguments: the model (``engine_file_path``, also .onnx or a checkpoint directory; empty keeps
the ``model_path`` of ``params_file``), ``backend`` and ``use_sim_time`` (empty: the params file's
value, else the node's default), ``namespace``, ``params_file`` (defaults to the package's
config/stereo.yaml), remappings of the four inputs, ``dds_profile``: the Fast DDS profile for large
images set for every process this launch starts (default: the package's fastdds_large_images.xml,
unless the variable this Fast DDS reads (FASTRTPS_DEFAULT_PROFILES_FILE on Humble and Jazzy,
FASTDDS_DEFAULT_PROFILES_FILE from Kilted) is already set; ``none`` sets
nothing and keeps the node from setting it itself), and ``camera_launch``: a camera driver's launch
file (.py, .xml or .yaml) started by this launch after the profile is set, so the sender gets it
too (the profile must be on the sending side as well). A node that cannot start (no model, bad
parameters) ends the launch with a non-zero exit status and its one-line reason.
Needs ``launch`` and ``launch_ros`` (a ROS 2 install; not on PyPI); without them run
``m2s-stereo-node --ros-args -p model_path:=...``.
"""

import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import AnyLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from m2s_stereo import params as P
from m2s_stereo.dds import OPT_OUT, make_room_for_shm, profile_variables, uses_fast_dds

PACKAGE = "m2s_stereo"
EXECUTABLE = "stereo_node"
NODE_NAME = "m2s_stereo"
DDS_PROFILE = "fastdds_large_images.xml"
INPUTS = {  # launch argument -> node-relative input topic
    "left_image_topic": "left/image_rect",
    "right_image_topic": "right/image_rect",
    "left_info_topic": "left/camera_info",
    "right_info_topic": "right/camera_info",
}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class LaunchArgumentError(RuntimeError):
    """A launch argument with a value the node cannot take (raised: ros2 launch then exits non-zero)."""


def _dds_profile(wanted: str, share: str) -> tuple[list, dict]:
    """(SetEnvironmentVariable actions for every process launched after them, extra environment of the
    node): the same rule as m2s_stereo.dds; ``none`` also tells the node not to set it itself."""
    if wanted.lower() == "none":
        return [], {OPT_OUT: "none"}
    if not wanted and any(os.environ.get(v) for v in profile_variables()):
        return [], {}
    if not uses_fast_dds():
        return [], {}
    path = wanted or os.path.join(share, "config", DDS_PROFILE)
    if not os.path.isfile(path):
        raise LaunchArgumentError(f"dds_profile:={path} is not a file")
    problem, removed = make_room_for_shm()  # before any process of this launch maps its segment
    if removed:
        print(f"[m2s_stereo] removed {removed} shared-memory segment(s) of Fast DDS processes that died from /dev/shm",
              file=sys.stderr)
    if problem:
        print(f"[m2s_stereo] WARNING: {problem}", file=sys.stderr)
    # the variable this Fast DDS reads: FASTRTPS_ on Humble and Jazzy (Fast DDS 2), FASTDDS_ from Kilted (Fast DDS 3)
    return [SetEnvironmentVariable(name, path) for name in profile_variables()], {}


def _overrides(get) -> dict:
    """Parameters given as launch arguments; an empty argument leaves the params file's value alone."""
    out = {}
    model = get("engine_file_path")
    if model:
        out[P.MODEL_PATH] = model
    backend = get("backend")
    if backend:
        if backend not in P.BACKENDS:
            raise LaunchArgumentError(f"backend:={backend}: one of {', '.join(P.BACKENDS)}")
        out[P.BACKEND] = backend
    baseline = get("baseline")
    if baseline:
        try:
            value = float(baseline)
        except ValueError:
            value = -1.0
        if problem := P.validate(P.BASELINE, value) if value >= 0 else f"{P.BASELINE} must be a number of metres":
            raise LaunchArgumentError(f"baseline:={baseline}: {problem}")
        out[P.BASELINE] = value
    sim = get("use_sim_time").lower()
    if sim:
        if sim not in TRUE + FALSE:
            raise LaunchArgumentError(f"use_sim_time:={sim}: true or false")
        out["use_sim_time"] = sim in TRUE
    return out


def _failed_to_start(event, context):
    """The node ended on its own with a non-zero status (it prints its reason first): fail the launch."""
    if event.returncode not in (0, None) and not context.is_shutdown:
        raise RuntimeError(f"{NODE_NAME} exited with status {event.returncode}: it could not run (its reason is "
                           "printed above); the launch ends")


def _setup(context, share):
    def get(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    env_actions, node_env = _dds_profile(get("dds_profile"), share)
    overrides = _overrides(get)
    node = Node(package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME, namespace=get("namespace"),
                parameters=[get("params_file")] + ([overrides] if overrides else []),
                remappings=[(topic, get(arg)) for arg, topic in INPUTS.items()], output="screen",
                additional_env=node_env or None)
    actions = list(env_actions)
    camera = get("camera_launch")
    if camera:
        if not os.path.isfile(camera):
            raise LaunchArgumentError(f"camera_launch:={camera} is not a launch file")
        actions.append(IncludeLaunchDescription(AnyLaunchDescriptionSource(camera)))
    return actions + [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_failed_to_start))]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument("engine_file_path", default_value="",
                              description="Model: TensorRT .engine, .onnx, or a checkpoint directory (parameter "
                                          f"{P.MODEL_PATH}); empty: the {P.MODEL_PATH} of params_file"),
        DeclareLaunchArgument("backend", default_value="",
                              description=f"{' | '.join(P.BACKENDS)}; empty: the params file's (else auto)"),
        DeclareLaunchArgument("namespace", default_value="stereo", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("baseline", default_value="",
                              description="Stereo baseline in metres, for a driver whose right camera_info has "
                                          "P[0,3] = 0 or > 0 (empty: from the camera_info)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "stereo.yaml"),
                              description="YAML with the node's parameters"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="Use /clock (bag replay): true | false; empty: the params file's (else false)"),
        DeclareLaunchArgument("dds_profile", default_value="",
                              description="Fast DDS profile for large images ('' = the package's unless one is set "
                                          "already, 'none' = leave DDS alone, in this launch and in the node)"),
        DeclareLaunchArgument("camera_launch", default_value="",
                              description="A camera driver's launch file to start with the node, after the DDS profile "
                                          "is set (the sender needs it too); empty: none"),
    ] + [DeclareLaunchArgument(arg, default_value=topic, description=f"Topic remapped to '{topic}'")
         for arg, topic in INPUTS.items()]
    return LaunchDescription(args + [OpaqueFunction(function=_setup, args=[share])])
