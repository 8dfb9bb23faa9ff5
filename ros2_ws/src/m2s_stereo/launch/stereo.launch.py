"""ros2 launch m2s_stereo stereo.launch.py engine_file_path:=/models/igev_rt.engine

Arguments: the model (``engine_file_path``, also .onnx or a checkpoint directory; empty keeps
the ``model_path`` of ``params_file``), ``backend``, ``namespace``, ``params_file`` (defaults to
the package's config/stereo.yaml), remappings of the four inputs, ``use_sim_time`` and
``dds_profile``: the Fast DDS profile for large images set for every process this launch starts
(default: the package's fastdds_large_images.xml, unless FASTDDS_DEFAULT_PROFILES_FILE /
FASTRTPS_DEFAULT_PROFILES_FILE is already set; ``none`` sets nothing). Include your camera driver
in the same launch, or export the variable for it: the profile must be on the sending side too.
Needs ``launch`` and ``launch_ros`` (a ROS 2 install; not on PyPI); without them run
``m2s-stereo-node --ros-args -p model_path:=...``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

PACKAGE = "m2s_stereo"
EXECUTABLE = "stereo_node"
INPUTS = {  # launch argument -> node-relative input topic
    "left_image_topic": "left/image_rect",
    "right_image_topic": "right/image_rect",
    "left_info_topic": "left/camera_info",
    "right_info_topic": "right/camera_info",
}
DDS_PROFILE = "fastdds_large_images.xml"
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Jazzy+, Humble


def _dds_profile(context, share):
    """SetEnvironmentVariable actions for the DDS profile (the same rule as m2s_stereo.dds)."""
    wanted = LaunchConfiguration("dds_profile").perform(context)
    if wanted.lower() == "none" or (not wanted and any(os.environ.get(v) for v in PROFILE_VARIABLES)):
        return []
    if not os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps"):
        return []
    path = wanted or os.path.join(share, "config", DDS_PROFILE)
    names = PROFILE_VARIABLES[1:] if os.environ.get("ROS_DISTRO") == "humble" else PROFILE_VARIABLES[:1]
    return [SetEnvironmentVariable(name, path) for name in names]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    default_params = os.path.join(share, "config", "stereo.yaml")
    args = [
        DeclareLaunchArgument("engine_file_path", default_value="",
                              description="Model: TensorRT .engine, .onnx, or a checkpoint directory (parameter "
                                          "model_path); empty: the model_path of params_file"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto | tensorrt | onnxruntime | torch"),
        DeclareLaunchArgument("namespace", default_value="stereo", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="YAML with the node's parameters"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)"),
        DeclareLaunchArgument("dds_profile", default_value="",
                              description="Fast DDS profile for large images ('' = the package's unless one is set "
                                          "already, 'none' = leave DDS alone)"),
    ] + [DeclareLaunchArgument(arg, default_value=topic, description=f"Topic remapped to '{topic}'")
         for arg, topic in INPUTS.items()]
    common = {"backend": LaunchConfiguration("backend"), "use_sim_time": LaunchConfiguration("use_sim_time")}
    given = PythonExpression(["'", LaunchConfiguration("engine_file_path"), "' != ''"])
    nodes = [
        Node(package=PACKAGE, executable=EXECUTABLE, name="m2s_stereo", namespace=LaunchConfiguration("namespace"),
             parameters=[LaunchConfiguration("params_file"), params],
             remappings=[(topic, LaunchConfiguration(arg)) for arg, topic in INPUTS.items()], output="screen",
             condition=condition)
        # model_path only when engine_file_path is given: an empty one would override params_file's
        for params, condition in (({**common, "model_path": LaunchConfiguration("engine_file_path")}, IfCondition(given)),
                                  (common, UnlessCondition(given)))
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_dds_profile, args=[share])] + nodes)
