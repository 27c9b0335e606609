"""Loader for the folder format of the real finger-joint crops (``manifest.csv`` + images).

The folder holds one sub-folder per joint series and a ``manifest.csv`` with the columns
``series, series_id, side, joint_code, image, mask_upper, mask_lower, soft_tissue`` (paths
relative to the folder; ``series_id``, ``side``, ``joint_code`` and ``soft_tissue`` may be left
out, :data:`REQUIRED_COLUMNS`). Each row becomes a :class:`~jsnsynth.synth.layers.JointLayers` by
layering (:func:`layers_from_images`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from jsnsynth.errors import InputError
from jsnsynth.synth.io import read_mask, read_radiograph
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM, JointLayers, joint_frame_from_masks
from jsnsynth.synth.xray import intensity_to_attenuation

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("series", "series_id", "side", "joint_code", "image", "mask_upper", "mask_lower", "soft_tissue")
#: The columns a manifest must have; the others may be left out (empty: no soft-tissue image, which
#: only the layering of a dataset source needs, and no series id, side or joint code).
REQUIRED_COLUMNS = ("series", "image", "mask_upper", "mask_lower")
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
        InputError: missing folder or manifest, a manifest that is not UTF-8 CSV text, missing
            columns, a row with missing cells, or an empty manifest.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise InputError(f"{root}: no {MANIFEST_NAME} (expected the finger-joint folder format)")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{manifest}: missing column(s) {', '.join(missing)}")
            records, lines, cells = [], [], []
            for row in reader:
                records.append(_record_of(row, root, manifest, reader.line_num))
                lines.append(reader.line_num)
                cells.append(row["image"])
    except (UnicodeDecodeError, csv.Error) as exc:  # a binary file, NUL bytes, an unclosed quote
        raise InputError(f"{manifest}: not a readable CSV text file ({exc.__class__.__name__})") from None
    if not records:
        raise InputError(f"{manifest}: lists no images")
    # an image listed twice is a visit paired with itself: validate-real measured such pairs
    # (JSN 0) into its statistics, and a dataset drew the joint twice as often
    first_line: dict[str, int] = {}
    for record, line, cell in zip(records, lines, cells):
        key = os.path.realpath(record.image)
        if key in first_line:
            raise InputError(f"{manifest}: line {line} lists the image {cell} again (line {first_line[key]} lists it "
                             "first)")
        first_line[key] = line
    return records


def _record_of(row: dict, root: Path, manifest: Path, line: int) -> FingerJointRecord:
    """One manifest row as a record; an empty mask or soft-tissue cell becomes a placeholder path
    that the sources report as missing.

    Raises:
        InputError: a row with fewer cells than the header (naming the line).
    """
    if None in row.values():
        raise InputError(f"{manifest}: line {line} has fewer cells than the header")
    row = {name: row.get(name, "") for name in MANIFEST_COLUMNS}
    for name in ("series", "image"):
        if not row[name].strip():  # an empty image cell named the folder itself: "not a file"
            raise InputError(f"{manifest}: line {line} has no {name}")
    return FingerJointRecord(
        series=row["series"],
        series_id=row["series_id"] or row["series"],
        side=row["side"],
        joint_code=row["joint_code"],
        image=root / row["image"],
        mask_upper=root / row["mask_upper"] if row["mask_upper"] else root / "<missing upper mask>",
        mask_lower=root / row["mask_lower"] if row["mask_lower"] else root / "<missing lower mask>",
        soft_tissue=root / row["soft_tissue"] if row["soft_tissue"] else root / "<missing soft-tissue image>",
    )


#: Within this distance of a drawn mask every bone pixel of ``a(image) - a(soft)`` is bone.
RIM_FULL_PX = 3.0
#: Where the bone share has tapered to zero: the soft-tissue images equal the radiographs beyond
#: about 10 px from the masks (their inpainting reach), so nothing of the bone is left there.
RIM_TAPER_END_PX = 10.0


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest pixel of ``mask`` (0 inside).

    SciPy's transform, not OpenCV's ``DIST_MASK_PRECISE``: that one's last bits follow the state
    of the heap (251 pixels of one real mask 1e-6 px apart between calls), which made datasets of
    real crops differ from run to run.
    """
    return ndimage.distance_transform_edt(~np.asarray(mask, dtype=bool)).astype(np.float32)


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


#: The soft-tissue images are trusted this far (px) from the drawn masks; closer, and under the
#: bones, the soft tissue is filled smoothly from around them (:func:`soft_tissue_estimate`).
SOFT_FILL_MARGIN_PX = 2


def fill_smooth(values: np.ndarray, known: np.ndarray, relax_iterations: int = 30) -> np.ndarray:
    """Fill the unknown pixels of ``values`` smoothly from the known ones (push-pull + relaxation).

    Push: halve the image repeatedly, averaging the known pixels only; pull: fill each level's
    unknown pixels from the coarser level (bilinear). A few Jacobi sweeps of the Laplace equation
    on the unknown pixels then remove the pyramid's blockiness. Edges of the image are treated as
    free (the fill runs off the crop like the tissue does).

    Args:
        values: ``(H, W)`` float image.
        known: ``(H, W)`` bool, True where ``values`` is trusted.
        relax_iterations: Jacobi sweeps after the pyramid fill.

    Returns:
        float64 image equal to ``values`` on ``known`` and smooth elsewhere.
    """
    values = np.asarray(values, np.float64)
    known = np.asarray(known, bool)
    if known.all() or not known.any():
        return values.copy()
    levels = [(values * known, known.astype(np.float64))]
    while min(levels[-1][0].shape) > 2 and (levels[-1][1] == 0).any():
        total, weight = levels[-1]
        h, w = total.shape
        total = cv2.resize(total, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
        weight = cv2.resize(weight, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
        levels.append((total, weight))
    total, weight = levels[-1]
    filled = np.where(weight > 0, total / np.maximum(weight, 1e-12), (total.sum() / max(weight.sum(), 1e-12)))
    for total, weight in reversed(levels[:-1]):
        h, w = total.shape
        coarse = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
        mean = total / np.maximum(weight, 1e-12)
        filled = weight * mean + (1.0 - weight) * coarse  # partial weights blend smoothly
    np.copyto(filled, values, where=known)
    # relax only the box around the unknown pixels (one known pixel more, which the 3x3 mean reads)
    rows, cols = np.nonzero((~known).any(axis=1))[0], np.nonzero((~known).any(axis=0))[0]
    box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    inner, unknown = filled[box], ~known[box]
    third = np.full(3, 1.0 / 3.0)
    for _ in range(relax_iterations):
        # the 3x3 mean as two 1-D passes: the same sums, twice as fast as cv2.blur in float64
        smoothed = cv2.sepFilter2D(inner, -1, third, third, borderType=cv2.BORDER_REPLICATE)
        np.copyto(inner, smoothed, where=unknown)
    return filled


def soft_tissue_estimate(
    total: np.ndarray,
    soft_attenuation: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    margin_px: int = SOFT_FILL_MARGIN_PX,
) -> np.ndarray:
    """Attenuation of the soft tissue that stays put when the bones move, float64.

    The soft-tissue image (clipped to the radiograph) away from the bones; under the bones (masks
    grown by ``margin_px``) a smooth fill of it from around them (:func:`fill_smooth`). Why not
    the soft-tissue image itself under the bones: it is darker there, in the bones' shape (by
    0.08-0.25 in attenuation on the real crops), either because the inpainting is too dark or
    because the bone displaces soft tissue. Both belong to the bone: tissue displaced by a bone
    moves with it, so the bone layer must carry its net contrast. Left in the soft layer, the
    dip stays behind when a bone is moved or flexed, a dark bone-shaped ghost that a registration
    reads as part of the bone's motion.
    """
    soft_outside = np.minimum(soft_attenuation, total)
    kernel = np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8)
    grown = cv2.dilate((np.asarray(upper_mask, bool) | np.asarray(lower_mask, bool)).astype(np.uint8), kernel) > 0
    return fill_smooth(soft_outside, ~grown)


def split_attenuation(
    total: np.ndarray, soft_estimate: np.ndarray, upper_mask: np.ndarray, lower_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layers ``(soft, upper, lower)`` of a total attenuation, given the soft tissue's estimate.

    Each bone gets its smooth share (:func:`bone_shares`) of the bone signal
    ``max(total - soft_estimate, 0)``; the soft layer is the rest, so the three add up to
    ``total`` exactly and each is >= 0.
    """
    bone_signal = np.maximum(total - soft_estimate, 0.0)
    share_upper, share_lower = bone_shares(np.asarray(upper_mask, bool), np.asarray(lower_mask, bool))
    upper = share_upper * bone_signal
    lower = share_lower * bone_signal
    soft = np.maximum(total - upper - lower, 0.0)
    return soft, upper, lower


def layers_from_images(
    image: np.ndarray,
    soft_image: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM,
    metadata: dict | None = None,
) -> JointLayers:
    """Layering of a radiograph given its bone-free soft-tissue image and two bone masks.

    ``a_bone = share * max(a(image) - a_soft_tissue, 0)`` with the smooth per-bone shares of
    :func:`bone_shares` (1 inside each mask, tapering to 0 at 10 px outside it) and the soft
    tissue of :func:`soft_tissue_estimate` (the soft-tissue image, filled smoothly under the
    bones); ``a_soft = a(image) - a_upper - a_lower``, so the three layers add up to ``a(image)``
    exactly and each is >= 0 (:func:`split_attenuation`). The returned masks are the drawn
    masks; the bone layers reach a few pixels beyond them (the blurred cortical rim). The joint
    frame is :func:`~jsnsynth.synth.layers.joint_frame_from_masks` of the masks.

    Saturated pixels (intensity 1, the top code of the file) are censored: their attenuation is
    only known to be high, and ``a(1)`` is the largest value the inverse mapping represents (11.1,
    twice that of the 8-bit code below it). Such a spike, moved by a sub-pixel shift, rings across
    the layer (a streak along the shift, where the baseline has none; 0.007 in attenuation 20 px
    from six such pixels in the test):
    11 % of the real crops hold a few (median 16 pixels). ``a(image)`` is filled smoothly there
    from the other pixels (:func:`fill_smooth`) and the count is kept as ``saturated_px``.

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
    saturated = np.asarray(image) >= 1.0
    if saturated.any():
        total = fill_smooth(total, ~saturated)
    soft_estimate = soft_tissue_estimate(total, intensity_to_attenuation(soft_image), upper_mask, lower_mask)
    soft, upper, lower = split_attenuation(total, soft_estimate, upper_mask, lower_mask)
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
            "soft_tissue_fill_margin_px": SOFT_FILL_MARGIN_PX,
            # Where the drawn masks overlap, the bone signal is split evenly between the bones:
            # layers there are a guess, so users can filter joints by this area.
            "mask_overlap_px": int((upper_mask & lower_mask).sum()),
            "saturated_px": int(saturated.sum()),
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
