"""The Layer Separation Network: a small U-Net with one shared encoder and a decoder per layer.

Input: a joint crop's display intensity ``I`` in ``[0, 1]`` (bone bright), one channel, any size
divisible by :data:`SIZE_MULTIPLE`; the network sees it standardised per image
(:func:`normalise_intensity`), so other exposures, display windows and 16-bit inputs look alike.

Outputs, per pixel:

* two bone-mask logits (upper, lower) from the bone branches' segmentation heads;
* three share logits ``(l_soft, l_upper, l_lower)``, one per decoder branch.

The layers are built from them by :func:`compose_fractions` and :func:`layers_from_fractions`:
each bone's share is gated by a *band* around its mask (:func:`band_gate`: the mask dilated by
:data:`BAND_FULL_PX` px, then a raised-cosine taper to 0 at :data:`BAND_END_PX` px;
``l_bone + log(gate)``), a softmax over the three gives fractions that add up to one, and each
layer is its fraction times the input attenuation ``a = -log(1 - I)``. So the layers are
non-negative and add up to ``a`` by construction. The band lets a bone layer take the blurred
cortical rim just outside the (tight, anatomical) mask, which would otherwise stay behind in
the soft layer when the bone is moved; with a hard (0/1) mask a bone layer is exactly zero
beyond the band (:data:`BAND_END_PX` steps of the octagonal dilation, at most
:data:`BAND_MAX_EUCLIDEAN_PX` px in Euclidean distance).

Deep supervision: every branch also predicts its outputs at 1/4 and 1/2 of the input size
(``aux`` outputs), trained against down-sampled targets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Input height and width must be multiples of this (five 2x down-samplings).
SIZE_MULTIPLE = 32
#: Floor of the per-image intensity standard deviation used for normalisation: about 6 grey
#: levels of 16 bits, so only a flat crop meets it. A floor of 0.02 had left 12-bit data stored
#: in 16-bit files (standard deviations 0.006-0.012) partly unstandardised (lower-bone Dice down
#: to 0.33); no training image comes near either (real crops 0.10 and up, restyled ones 0.105).
MIN_STD = 1e-4
#: A bone's share is ungated within this many px (dilation steps) of its mask, training pixels.
BAND_FULL_PX = 4
#: ... and its gate tapers (raised cosine) to exactly 0 at this many steps.
BAND_END_PX = 12
#: Upper bound of the band in Euclidean px: octagonal dilation reaches sqrt(1 + 1/4) x steps.
BAND_MAX_EUCLIDEAN_PX = 1.12 * BAND_END_PX


@dataclass(frozen=True)
class ModelConfig:
    """Widths of the network.

    Attributes:
        encoder_channels: channels of the six encoder levels (full size down to 1/32).
        decoder_channels: channels of each decoder branch at the five upper levels (1/16 to full).
    """

    encoder_channels: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    decoder_channels: tuple[int, ...] = (48, 32, 16, 8, 8)

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, record: dict) -> "ModelConfig":
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{k: tuple(v) for k, v in record.items() if k in cls.__dataclass_fields__})


def conv_block(in_channels: int, out_channels: int, convs: int = 2) -> nn.Sequential:
    """``convs`` x (3x3 conv, batch norm, ReLU)."""
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [
            nn.Conv2d(in_channels if k == 0 else out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class DecoderBranch(nn.Module):
    """One layer's decoder: up-sample, join the encoder skip, convolve; heads at three scales."""

    def __init__(self, encoder_channels: tuple[int, ...], decoder_channels: tuple[int, ...], outputs: int) -> None:
        super().__init__()
        skips = list(encoder_channels[:-1])[::-1]  # 1/16 ... full size
        blocks = []
        previous = encoder_channels[-1]
        for skip, width in zip(skips, decoder_channels):
            blocks.append(conv_block(previous + skip, width, convs=1 if width <= 16 else 2))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(decoder_channels[-1], outputs, 1)
        # Deep supervision at 1/4 and 1/2 of the input size.
        self.aux_heads = nn.ModuleList([nn.Conv2d(decoder_channels[-3], outputs, 1), nn.Conv2d(decoder_channels[-2], outputs, 1)])

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = features[-1]
        skips = features[:-1][::-1]
        aux = []
        n = len(self.blocks)
        for level, (block, skip) in enumerate(zip(self.blocks, skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
            if level == n - 3:
                aux.append(self.aux_heads[0](x))
            elif level == n - 2:
                aux.append(self.aux_heads[1](x))
        return self.head(x), aux


class LayerSeparationNet(nn.Module):
    """Shared encoder, three decoder branches (soft tissue, upper bone, lower bone).

    ``forward`` takes the *normalised* input ``(B, 1, H, W)`` and returns a dict with
    ``share_logits (B, 3, H, W)``, ``mask_logits (B, 2, H, W)`` and ``aux``: a list of
    ``(share_logits, mask_logits)`` at 1/4 and 1/2 size.
    """

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder_channels
        self.encoder = nn.ModuleList(
            [conv_block(1, enc[0], convs=1 if enc[0] <= 8 else 2)] + [conv_block(enc[i - 1], enc[i]) for i in range(1, len(enc))]
        )
        self.soft_branch = DecoderBranch(enc, config.decoder_channels, outputs=1)
        self.upper_branch = DecoderBranch(enc, config.decoder_channels, outputs=2)
        self.lower_branch = DecoderBranch(enc, config.decoder_channels, outputs=2)

    def forward(self, x: torch.Tensor) -> dict:
        features = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        soft, soft_aux = self.soft_branch(features)
        upper, upper_aux = self.upper_branch(features)
        lower, lower_aux = self.lower_branch(features)

        def split(s: torch.Tensor, u: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            shares = torch.cat([s, u[:, :1], l[:, :1]], dim=1)
            masks = torch.cat([u[:, 1:], l[:, 1:]], dim=1)
            return shares, masks

        shares, masks = split(soft, upper, lower)
        aux = [split(s, u, l) for s, u, l in zip(soft_aux, upper_aux, lower_aux)]
        return {"share_logits": shares, "mask_logits": masks, "aux": aux}


def normalise_intensity(intensity: torch.Tensor) -> torch.Tensor:
    """Standardise each image of ``(B, 1, H, W)`` to zero mean and unit standard deviation.

    Makes the network blind to exposure, display window offset and bit depth (all inputs are
    ``[0, 1]`` intensities); the standard deviation has a floor so a flat crop is not blown up.
    """
    mean = intensity.mean(dim=(-2, -1), keepdim=True)
    std = intensity.std(dim=(-2, -1), keepdim=True).clamp_min(MIN_STD)
    return (intensity - mean) / std


def intensity_attenuation(intensity: torch.Tensor, max_intensity: float = 1.0 - 1.0 / 65536.0) -> torch.Tensor:
    """``a = -log(1 - I)`` with ``I`` clipped below 1 (as :func:`jsnsynth.synth.xray.intensity_to_attenuation`)."""
    return -torch.log1p(-intensity.clamp(0.0, max_intensity))


def band_gate(bone_masks: torch.Tensor, pixel_scale: float = 1.0) -> torch.Tensor:
    """Soft band around each bone mask: ``max_k w(k) * dilate_k(mask)``, values in ``[0, 1]``.

    ``dilate_k`` is ``k`` steps of 3x3 max-pooling, alternating a square and a cross, which
    grows a region as an octagon (close to a disc; differentiable in the mask probabilities);
    ``w(k) = 1`` up to :data:`BAND_FULL_PX` steps, then a raised cosine to 0 at
    :data:`BAND_END_PX`. For a hard mask the gate is 1 on and near the mask and exactly 0 beyond
    the band. The mask logits stay tight anatomical masks; only the layers use the band.

    Args:
        bone_masks: ``(B, 2, H, W)`` mask probabilities or hard masks.
        pixel_scale: size of one pixel of ``bone_masks`` in training pixels (4 at 1/4 size;
            below 1 for a crop finer than the training spacing); the band is scaled to it.
    """
    weights = _band_weights(pixel_scale)
    if not bone_masks.requires_grad and bone_masks.device.type == "cpu" and bool(((bone_masks == 0) | (bone_masks == 1)).all()):
        return _hard_band_gate(bone_masks, weights)
    current = bone_masks.clamp(0.0, 1.0)
    gate = current
    for k, weight in enumerate(weights, start=1):
        if k % 2:
            current = F.max_pool2d(current, 3, stride=1, padding=1)
        else:
            current = torch.maximum(
                F.max_pool2d(current, (3, 1), stride=1, padding=(1, 0)), F.max_pool2d(current, (1, 3), stride=1, padding=(0, 1))
            )
        gate = torch.maximum(gate, weight * current)
    return gate


def _band_weights(pixel_scale: float) -> list[float]:
    """``w(k)`` of :func:`band_gate` for the dilation steps ``k = 1, 2, ...`` while it is above 0."""
    full = BAND_FULL_PX / pixel_scale
    end = BAND_END_PX / pixel_scale
    weights = []
    for k in range(1, max(1, int(math.ceil(end))) + 1):
        ramp = min(max((k - full) / max(end - full, 1e-6), 0.0), 1.0)
        weight = 0.5 * (1.0 + math.cos(math.pi * ramp))
        if weight <= 0.0:
            break
        weights.append(weight)
    return weights


def _hard_band_gate(bone_masks: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """:func:`band_gate` of 0/1 masks (the separation's hard masks), the same values: OpenCV's
    dilations of 8-bit masks, where torch's float max-pooling at full resolution took 1.5 s of a
    1024 px crop at 0.044 mm/px (tens of steps over a million pixels; 20 s at 2048 px)."""
    import cv2
    import numpy as np

    square = np.ones((3, 3), np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    masks = bone_masks.numpy()
    gates = masks.astype(np.float32)  # a copy: the masks stay as they are
    for index in np.ndindex(masks.shape[:-2]):
        current = masks[index].astype(np.uint8)
        gate = gates[index]
        for k, weight in enumerate(weights, start=1):
            current = cv2.dilate(current, square if k % 2 else cross)  # outside the picture counts as 0
            np.maximum(gate, np.float32(weight) * current, out=gate)
    return torch.from_numpy(gates)


def compose_fractions(share_logits: torch.Tensor, bone_masks: torch.Tensor, pixel_scale: float = 1.0) -> torch.Tensor:
    """Soft/upper/lower fractions (adding up to one) from share logits and bone masks in ``[0, 1]``.

    A bone's share is multiplied by the :func:`band_gate` of its mask (``log(gate)`` added to its
    logit), so with a hard mask a bone's fraction is exactly zero beyond the band; the
    soft-tissue share is never gated, so the fractions are always defined.
    """
    gate = torch.log(band_gate(bone_masks, pixel_scale))  # -inf where the gate is 0
    logits = torch.cat([share_logits[:, :1], share_logits[:, 1:] + gate], dim=1)
    return torch.softmax(logits, dim=1)


def layers_from_fractions(fractions: torch.Tensor, attenuation: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` layers = fractions x the input attenuation ``(B, 1, H, W)``."""
    return fractions * attenuation
