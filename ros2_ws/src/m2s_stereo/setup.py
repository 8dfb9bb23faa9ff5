"""ament_python package of the Mono2Stereo ROS 2 node (colcon build in a ROS 2 workspace).

The node imports the project's ``calib`` and ``m2s_export`` packages: install the repository
into the same Python environment first (``pip install -e /path/to/mono2stereo[export]``).
"""

from glob import glob

from setuptools import setup

PACKAGE = "m2s_stereo"

setup(
    name=PACKAGE,
    version="0.2.0",  # = pyproject.toml's (tests/test_release.py)
    packages=[PACKAGE],
    package_data={PACKAGE: ["*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + [f"{PACKAGE}/fastdds_large_images.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="Mono2Stereo developers",
    maintainer_email="dev@mono2stereo.local",
    description="Mono2Stereo stereo depth node",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # node_main takes SIGINT/SIGTERM before the heavy imports and the model load (see its docstring)
            "stereo_node = m2s_stereo.node_main:main",
        ],
    },
)
