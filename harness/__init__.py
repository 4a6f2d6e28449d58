"""par-harness: a reproducibility harness for robot-manipulation learning.

Importing the package applies the runtime settings every step needs (offline Hugging Face,
a Vulkan driver for SAPIEN on GPU-less machines); see harness/runtime.py.
"""

from harness.runtime import configure_runtime

configure_runtime()

__version__ = "0.1.0"
