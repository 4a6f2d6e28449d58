"""What both Diffusion Policy adapters (dp, dp_unet) do to observations: the history they
condition on and the frame resize before the encoder's crop."""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F


def resize_frames(images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Frames (..., 3, H, W), any leading dims, resized to ``size`` (None: unchanged)."""
    if size is None:
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*images.shape[:-2], *out.shape[-2:])


class ObservationHistory:
    """The last ``n_obs_steps`` (frame, qpos) pairs of a rollout; at the start of an episode
    the first observation is repeated, as the original's env runner pads it."""

    def __init__(self, n_obs_steps: int):
        self.n_obs_steps = n_obs_steps
        self._items: deque = deque(maxlen=n_obs_steps)

    def clear(self) -> None:
        self._items.clear()

    def append(self, observation: dict) -> None:
        self._items.append((observation["frame"], observation["qpos"]))

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames (1, T, 3, H, W), qpos (1, T, Q)), oldest first."""
        while len(self._items) < self.n_obs_steps:
            self._items.appendleft(self._items[0])
        frames = torch.stack([f for f, _ in self._items])[None]
        qpos = torch.stack([q for _, q in self._items])[None]
        return frames, qpos
