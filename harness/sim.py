"""Thin layer over ManiSkill3: making envs and capturing one camera's RGB image.

The same ``capture_rgb`` produces the dataset frames (from recorded states) and, later, the
evaluation observations (after each env step), so training and test images come from one
code path.
"""

from __future__ import annotations

import numpy as np

from harness import brdf_lut
from harness.runtime import require_vulkan

SIM_BACKEND = "physx_cpu"  # ManiSkill's CPU simulator; env.reset(seed) is reproducible across processes


def make_env(env_id: str, control_mode: str, camera: str | None = None,
             image_size: tuple[int, int] | None = None, obs_mode: str = "none",
             max_episode_steps: int | None = None):
    """A single ManiSkill env on the CPU backend, with ``camera`` rendering at ``image_size``.

    ``camera`` is either the task's human render camera (``render_camera``; what RDT/PAR
    observe through ``env.render()``) or one of its sensor cameras (``base_camera``, ...).
    """
    require_vulkan()
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the envs)

    kwargs = dict(obs_mode=obs_mode, control_mode=control_mode, render_mode="rgb_array",
                  sim_backend=SIM_BACKEND)
    if max_episode_steps is not None:  # replaces the env's own TimeLimit (e.g. PushCube's 50)
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if camera is not None and image_size is not None:
        height, width = image_size
        size = dict(width=int(width), height=int(height))
        if camera == "render_camera":
            kwargs["human_render_camera_configs"] = size
        else:
            kwargs["sensor_configs"] = {camera: size}
    return gym.make(env_id, **kwargs)


def camera_names(env) -> dict[str, list[str]]:
    """The human render cameras and sensor cameras an env has."""
    base = env.unwrapped
    return {"render": list(base._human_render_cameras), "sensors": list(base._sensors)}


def capture_rgb(env, camera: str) -> np.ndarray:
    """Render the current scene state through ``camera``; returns uint8 (H, W, 3).

    Only that one camera is rendered (rendering on a CPU costs ~50-100 ms per camera: it is
    bound by scene geometry, not by resolution).
    """
    base = env.unwrapped
    if camera in base._human_render_cameras:
        brdf_lut.give_to(base._human_render_cameras[camera])
        # render_rgb_array shows objects hidden from sensors (e.g. PickCube's goal marker),
        # exactly like env.render() in the RDT/PAR evaluation.
        image = base.render_rgb_array(camera)
    elif camera in base._sensors:
        brdf_lut.give_to(base._sensors[camera])
        for obj in base._hidden_objects:
            obj.hide_visual()
        base.scene.update_render(update_sensors=True, update_human_render_cameras=False)
        sensor = base._sensors[camera]
        sensor.capture()
        image = sensor.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]
    else:
        names = camera_names(env)
        raise ValueError(
            f"{base.spec.id} has no camera {camera!r}; render cameras: {names['render']}, "
            f"sensor cameras: {names['sensors']}"
        )
    image = image.cpu().numpy() if hasattr(image, "cpu") else np.asarray(image)
    return np.ascontiguousarray(image[0] if image.ndim == 4 else image, dtype=np.uint8)


def robot_qpos(env) -> np.ndarray:
    """Joint positions of the robot (Panda: 7 arm joints + 2 fingers), float32."""
    qpos = env.unwrapped.agent.robot.get_qpos()
    qpos = qpos.cpu().numpy() if hasattr(qpos, "cpu") else np.asarray(qpos)
    return np.asarray(qpos[0] if qpos.ndim == 2 else qpos, dtype=np.float32)

