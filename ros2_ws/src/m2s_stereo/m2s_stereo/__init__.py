"""ROS 2 stereo node of Mono2Stereo: rectified pairs in; disparity, depth and points out."""
