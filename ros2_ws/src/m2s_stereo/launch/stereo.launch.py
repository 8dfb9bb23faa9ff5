"""ros2 launch m2s_stereo stereo.launch.py engine_file_path:=/models/igev_rt.engine

Arguments: the model (``engine_file_path``, also .onnx or a checkpoint directory), ``namespace``,
``params_file`` (defaults to the package's config/stereo.yaml), remappings of the four inputs,
``use_sim_time``. Needs ``launch`` and ``launch_ros`` (a ROS 2 install; not on PyPI); without them
run ``m2s-stereo-node --ros-args -p model_path:=...``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "m2s_stereo"
EXECUTABLE = "stereo_node"
INPUTS = {  # launch argument -> node-relative input topic
    "left_image_topic": "left/image_rect",
    "right_image_topic": "right/image_rect",
    "left_info_topic": "left/camera_info",
    "right_info_topic": "right/camera_info",
}


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "stereo.yaml")
    args = [
        DeclareLaunchArgument("engine_file_path", default_value="",
                              description="Model: TensorRT .engine, .onnx, or a checkpoint directory (parameter model_path)"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto | tensorrt | onnxruntime | torch"),
        DeclareLaunchArgument("namespace", default_value="stereo", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="YAML with the node's parameters"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)"),
    ] + [DeclareLaunchArgument(arg, default_value=topic, description=f"Topic remapped to '{topic}'")
         for arg, topic in INPUTS.items()]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="m2s_stereo",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"),
                    {"model_path": LaunchConfiguration("engine_file_path"), "backend": LaunchConfiguration("backend"),
                     "use_sim_time": LaunchConfiguration("use_sim_time")}],
        remappings=[(topic, LaunchConfiguration(arg)) for arg, topic in INPUTS.items()],
        output="screen",
    )
    return LaunchDescription(args + [node])
