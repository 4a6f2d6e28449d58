"""robomimic's image encoder (ARISE-Initiative/robomimic, ``models/obs_core.py`` VisualCore with
``ResNet18Conv`` and ``SpatialSoftmax``; ``models/obs_core.py`` CropRandomizer), shared by the
methods built on it: Diffusion Policy (dp) and BC-T (bc_t)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialSoftmax(nn.Module):
    """Expected 2D position of each of ``num_kp`` learned keypoint maps (robomimic)."""

    def __init__(self, in_channels: int, num_kp: int):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(features)
        b, k, h, w = maps.shape
        attention = F.softmax(maps.flatten(2), dim=-1)
        ys = torch.linspace(-1, 1, h, device=maps.device, dtype=maps.dtype)
        xs = torch.linspace(-1, 1, w, device=maps.device, dtype=maps.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        x = (attention * grid_x.reshape(1, 1, -1)).sum(-1)
        y = (attention * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([x, y], -1).reshape(b, k * 2)


class ImageEncoder(nn.Module):
    """robomimic's VisualCore: ResNet18Conv trunk (random init) + spatial softmax + linear, behind
    its CropRandomizer (a random crop per image in training, the centre crop in evaluation).

    ``group_norm``: BatchNorm -> GroupNorm(c/16), as Diffusion Policy does so that its EMA works;
    robomimic's own policies (BC-T) keep BatchNorm."""

    def __init__(self, num_kp: int, feature_dim: int, crop_fraction: float, group_norm: bool = True):
        super().__init__()
        import torchvision

        norm_layer = (lambda c: nn.GroupNorm(num_groups=c // 16, num_channels=c)) if group_norm else None
        resnet = torchvision.models.resnet18(weights=None, norm_layer=norm_layer)
        self.backbone = nn.Sequential(*list(resnet.children())[:-2])
        self.pool = SpatialSoftmax(512, num_kp)
        self.proj = nn.Linear(num_kp * 2, feature_dim)
        self.crop_fraction = crop_fraction

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        ch, cw = max(8, round(h * self.crop_fraction)), max(8, round(w * self.crop_fraction))
        if self.training:  # one random crop per image
            top = torch.randint(0, h - ch + 1, (images.shape[0],), device=images.device)
            left = torch.randint(0, w - cw + 1, (images.shape[0],), device=images.device)
            rows = top[:, None] + torch.arange(ch, device=images.device)
            cols = left[:, None] + torch.arange(cw, device=images.device)
            idx = torch.arange(images.shape[0], device=images.device)[:, None, None]
            return images.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[..., top:top + ch, left:left + cw]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.backbone(self.crop(images))))
