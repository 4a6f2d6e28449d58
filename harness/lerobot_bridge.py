"""What a LeRobot policy config needs to know about our data, in one place.

The harness normalises qpos and actions itself, so LeRobot's own normalisation is switched
off for them (IDENTITY); images may keep a LeRobot normalisation (ACT: ImageNet statistics).
"""

from __future__ import annotations

from harness.adapter import DataInfo

IMAGE_KEY, STATE_KEY, ACTION_KEY = "observation.image", "observation.state", "action"


def lerobot_features(data: DataInfo, image_normalization: str = "IDENTITY",
                     image_size: tuple[int, int] | None = None) -> dict:
    """``input_features``, ``output_features`` and ``normalization_mapping`` for a LeRobot
    policy config: one RGB camera (``image_size``: the size the policy is given, default the
    dataset's), the robot's joint positions, the action vector."""
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature

    height, width = image_size or data.image_size
    return dict(
        input_features={IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, height, width)),
                        STATE_KEY: PolicyFeature(FeatureType.STATE, (data.qpos_dim,))},
        output_features={ACTION_KEY: PolicyFeature(FeatureType.ACTION, (data.action_dim,))},
        normalization_mapping={"VISUAL": NormalizationMode[image_normalization],
                               "STATE": NormalizationMode.IDENTITY,
                               "ACTION": NormalizationMode.IDENTITY},
    )
