"""Random crops and horizontal flips, applied to normalized image batches on the device.

Used to ask whether the standard CIFAR augmentation (pad 4, random 32×32 crop, random
horizontal flip) changes what first-layer weights align with. The batch is already on
the device and normalized, so the zero padding is the dataset mean; each image is cut
from the padded batch with one advanced-indexing gather (no per-image Python loop), and
all randomness comes from the caller's generator so a seeded run is reproducible and
a resumed run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch.nn import functional as F

__all__ = ["Augmentation"]


@dataclass(frozen=True)
class Augmentation:
    """``crop``: zero padding in pixels for a random crop back to the original size
    (CIFAR: 4); ``flip``: random horizontal flip with probability 1/2."""

    crop: int = 0
    flip: bool = False

    def __post_init__(self):
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"augment.crop must be an integer >= 0 (pixels of padding), got {self.crop!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"augment.flip must be true or false, got {self.flip!r}")

    @classmethod
    def from_settings(cls, settings: dict | None) -> "Augmentation | None":
        """The augmentation a config's ``augment`` section asks for; None when it asks
        for none, so that training without it runs exactly the code it ran before."""
        if not settings:
            return None
        if not isinstance(settings, dict):
            raise ValueError(f"augment must be a mapping such as {{crop: 4, flip: true}}, got {settings!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown augment settings {unknown}; valid keys: {', '.join(known)}")
        augmentation = cls(**settings)
        return augmentation if augmentation.crop or augmentation.flip else None

    def check_inputs(self, input_shape: tuple[int, ...]) -> None:
        """Refuse data that is not (C, H, W) images: vectors have no pixels to crop or flip."""
        if len(input_shape) != 3:
            raise ValueError(
                f"augment ({self}) needs image data (C, H, W); these inputs have shape {tuple(input_shape)}"
            )

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample crop offsets ``dy``, ``dx`` in [0, 2·crop] and ``flip`` flags, drawn
        on the generator's device (offsets first, then flips; a disabled part draws nothing)."""
        device = generator.device
        if self.crop:
            dy, dx = torch.randint(0, 2 * self.crop + 1, (2, batch_size), generator=generator, device=device)
        else:
            dy = dx = torch.zeros(batch_size, dtype=torch.int64, device=device)
        if self.flip:
            flip = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
        else:
            flip = torch.zeros(batch_size, dtype=torch.bool, device=device)
        return dy, dx, flip

    def transform(self, images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Image i cut from the zero-padded batch at (dy[i], dx[i]), then mirrored where
        flip[i]: one gather with per-sample row and column indices."""
        if images.ndim != 4:
            raise ValueError(f"augment needs a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        padded = F.pad(images, (self.crop,) * 4) if self.crop else images
        rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
        columns = torch.arange(w, device=images.device).expand(b, w)
        columns = torch.where(flip[:, None], columns.flip(1), columns) + dx[:, None]  # (B, W)
        out = padded[
            torch.arange(b, device=images.device)[:, None, None, None],
            torch.arange(c, device=images.device)[None, :, None, None],
            rows[:, None, :, None],
            columns[:, None, None, :],
        ]
        # Keep the caller's memory layout (channels_last on CUDA).
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            return out.contiguous(memory_format=torch.channels_last)
        return out

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A randomly cropped and/or flipped copy of a batch (B, C, H, W) of normalized
        images; ``generator`` must live on the images' device."""
        if images.ndim != 4:
            raise ValueError(f"augment needs a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
        return self.transform(images, *self.draw(len(images), generator))
