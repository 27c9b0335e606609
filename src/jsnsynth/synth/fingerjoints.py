"""Loader for the folder format of the real finger-joint crops (``manifest.csv`` + images).

The folder holds one sub-folder per joint series and a ``manifest.csv`` with the columns
``series, series_id, side, joint_code, image, mask_upper, mask_lower, soft_tissue`` (paths
relative to the folder). Each row becomes a :class:`~jsnsynth.synth.layers.JointLayers` by
layering (:func:`layers_from_images`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.io import read_mask, read_radiograph
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM, JointLayers, joint_frame_from_masks
from jsnsynth.synth.xray import intensity_to_attenuation

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("series", "series_id", "side", "joint_code", "image", "mask_upper", "mask_lower", "soft_tissue")
#: Citation for dataset and model cards.
FINGERJOINTS_CITATION = (
    "Finger-joint crops, bone masks and soft-tissue images from the public BLS-GAN repository "
    "(pokeblow/BLS-GAN; Wang et al., AAAI 2025); no licence stated, used for research only."
)


@dataclass(frozen=True)
class FingerJointRecord:
    """One row of ``manifest.csv`` with absolute paths."""

    series: str
    series_id: str
    side: str
    joint_code: str
    image: Path
    mask_upper: Path
    mask_lower: Path
    soft_tissue: Path

    @property
    def name(self) -> str:
        """A stable identifier: series and image file stem."""
        return f"{self.series}/{self.image.stem}"


def read_manifest(root: str | os.PathLike) -> list[FingerJointRecord]:
    """Read ``root/manifest.csv`` into records, in file order.

    Raises:
        InputError: missing folder or manifest, missing columns, or an empty manifest.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise InputError(f"{root}: no {MANIFEST_NAME} (expected the finger-joint folder format)")
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{manifest}: missing column(s) {', '.join(missing)}")
        records = [
            FingerJointRecord(
                series=row["series"],
                series_id=row["series_id"],
                side=row["side"],
                joint_code=row["joint_code"],
                image=root / row["image"],
                mask_upper=root / row["mask_upper"] if row["mask_upper"] else root / "<missing upper mask>",
                mask_lower=root / row["mask_lower"] if row["mask_lower"] else root / "<missing lower mask>",
                soft_tissue=root / row["soft_tissue"] if row["soft_tissue"] else root / "<missing soft-tissue image>",
            )
            for row in reader
        ]
    if not records:
        raise InputError(f"{manifest}: lists no images")
    return records


#: Within this distance of a drawn mask every bone pixel of ``a(image) - a(soft)`` is bone.
RIM_FULL_PX = 3.0
#: Where the bone share has tapered to zero: the soft-tissue images equal the radiographs beyond
#: about 10 px from the masks (their inpainting reach), so nothing of the bone is left there.
RIM_TAPER_END_PX = 10.0


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest pixel of ``mask`` (0 inside)."""
    outside = np.ascontiguousarray(~mask, dtype=np.uint8)
    return cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def bone_shares(
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    rim_full_px: float = RIM_FULL_PX,
    rim_taper_end_px: float = RIM_TAPER_END_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the bone signal ``a(image) - a(soft)`` given to each bone, per pixel.

    The bone signal is kept in full within ``rim_full_px`` of either mask, then its weight falls
    smoothly (raised cosine) to 0 at ``rim_taper_end_px``. It is split between the bones by
    distance: a pixel at distances ``d_u``, ``d_l`` from the two masks gives
    ``d_l**4 / (d_u**4 + d_l**4)`` to the upper bone (all of it inside the upper mask, half where the masks overlap). Both
    shares vary continuously, so a bone layer has no step at its boundary that a sub-pixel
    move would have to reproduce.

    Why beyond the mask at all: the hand-drawn masks sit a pixel or two off the cortical edge
    and detector blur spreads the edge further, so mask-only layering leaves a bright bone rim in
    the soft layer, which then stays behind when the bone is moved.
    """
    d_upper = _distance_to(upper_mask)
    d_lower = _distance_to(lower_mask)
    ramp = np.clip((np.minimum(d_upper, d_lower) - rim_full_px) / (rim_taper_end_px - rim_full_px), 0.0, 1.0)
    kept = 0.5 + 0.5 * np.cos(np.float32(np.pi) * ramp)
    # d**4 makes the hand-over sharp near the midline between the bones but still continuous.
    p_upper = np.square(np.square(d_upper))
    p_lower = np.square(np.square(d_lower))
    both = p_upper + p_lower
    to_upper = np.divide(p_lower, both, out=np.full_like(both, 0.5), where=both > 0)
    return kept * to_upper, kept * (1.0 - to_upper)


def layers_from_images(
    image: np.ndarray,
    soft_image: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM,
    metadata: dict | None = None,
) -> JointLayers:
    """Layering of a radiograph given its bone-free soft-tissue image and two bone masks.

    ``a_bone = share * max(a(image) - a(soft), 0)`` with the smooth per-bone shares of
    :func:`bone_shares` (1 inside each mask, tapering to 0 at 10 px outside it), and
    ``a_soft = a(image) - a_upper - a_lower``, so the three layers add up to ``a(image)``
    exactly and the soft layer is >= ``min(a(image), a(soft))`` >= 0. The returned masks are the
    drawn masks; the bone layers reach a few pixels beyond them (the blurred cortical rim). The
    joint frame is :func:`~jsnsynth.synth.layers.joint_frame_from_masks` of the masks.

    Args:
        image: ``(H, W)`` display intensity in ``[0, 1]``, bone bright.
        soft_image: the same crop with the bones removed, same shape and scale.
        upper_mask, lower_mask: ``(H, W)`` bool bone masks.
        pixel_spacing_mm: pixel size.
        metadata: free record kept with the layers.
    """
    if image.shape != soft_image.shape:
        raise InputError(f"soft-tissue image is {soft_image.shape}, radiograph is {image.shape}")
    for name, mask in (("upper", upper_mask), ("lower", lower_mask)):
        if mask.shape != image.shape:
            raise InputError(f"{name}-bone mask is {mask.shape}, radiograph is {image.shape}")
        if not mask.any():
            raise InputError(f"{name}-bone mask is empty")
    total = intensity_to_attenuation(image)
    bone_signal = np.maximum(total - intensity_to_attenuation(soft_image), 0.0)
    share_upper, share_lower = bone_shares(upper_mask, lower_mask)
    upper = share_upper * bone_signal
    lower = share_lower * bone_signal
    soft = np.maximum(total - upper - lower, 0.0)
    center_xy, axis_deg = joint_frame_from_masks(upper_mask, lower_mask)
    return JointLayers(
        soft=soft,
        upper=upper,
        lower=lower,
        upper_mask=upper_mask,
        lower_mask=lower_mask,
        pixel_spacing_mm=pixel_spacing_mm,
        joint_center_xy=center_xy,
        joint_axis_deg=axis_deg,
        metadata={
            **(metadata or {}),
            "bone_rim_taper_px": [RIM_FULL_PX, RIM_TAPER_END_PX],
            # Where the drawn masks overlap, the bone signal is split evenly between the bones:
            # layers there are a guess, so users can filter joints by this area.
            "mask_overlap_px": int((upper_mask & lower_mask).sum()),
        },
    )


def load_fingerjoint(record: FingerJointRecord, pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM) -> JointLayers:
    """Read one manifest row and return its layers (see :func:`layers_from_images`).

    The dataset publishes no pixel spacing; ``pixel_spacing_mm`` is the nominal one.

    Raises:
        InputError: a missing or unreadable image, soft-tissue image or mask, a size mismatch,
            or an empty mask; the message names the file.
    """
    radiograph = read_radiograph(record.image)
    shape = radiograph.intensity.shape
    soft = read_radiograph(record.soft_tissue)
    if soft.intensity.shape != shape:
        raise InputError(f"{record.soft_tissue}: soft-tissue image is {soft.intensity.shape}, radiograph is {shape}")
    upper_mask = read_mask(record.mask_upper, shape)
    lower_mask = read_mask(record.mask_lower, shape)
    metadata = {
        "source": "fingerjoints",
        "series": record.series,
        "series_id": record.series_id,
        "side": record.side,
        "joint_code": record.joint_code,
        "image": record.image.name,
        "bit_depth": radiograph.bit_depth,
        "pixel_spacing_is_nominal": True,
    }
    return layers_from_images(radiograph.intensity, soft.intensity, upper_mask, lower_mask, pixel_spacing_mm, metadata)
