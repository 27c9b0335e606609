"""Separation of radiograph crops with a trained LSN (``jsnsynth separate``).

:func:`separate_intensity` turns one crop into :class:`~jsnsynth.synth.layers.JointLayers`:

1. resample to the training pixel size when the crop's pixel spacing is known and differs
   (:data:`TRAINING_PIXEL_SPACING_MM`), pad (reflect) to a multiple of 32;
2. run the network, crop the padding off its logits and resample them back to the input grid;
3. threshold the mask logits (hard masks; the largest connected piece of each, holes filled),
   gate the bone shares with a band around them (:func:`jsnsynth.lsn.model.band_gate`, so a
   bone layer also holds its blurred cortical rim just outside the mask), and multiply the
   fractions by the input's own attenuation ``a = -log(1 - I)`` at full resolution.

So the three layers add up to the input attenuation to float32 rounding, whatever the
resampling, and each bone layer is exactly zero beyond the band around its mask
(:data:`jsnsynth.lsn.model.BAND_MAX_EUCLIDEAN_PX` training pixels).

Weights load from a local file only (the bundled :data:`DEFAULT_WEIGHTS` by default): nothing
is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import scipy.ndimage
import torch
from torch import nn

from jsnsynth.errors import InputError, OutputError
from jsnsynth.lsn.model import (
    SIZE_MULTIPLE,
    LayerSeparationNet,
    ModelConfig,
    compose_fractions,
    normalise_intensity,
)
from jsnsynth.picture import content_box, fill_from_picture, find_fill, two_values_only
from jsnsynth.synth.io import (
    DICOM_SUFFIXES,
    RASTER_SUFFIXES,
    check_output_folder,
    check_outputs_apart,
    check_writable,
    encode_float_tiff,
    encode_png,
    radiograph_files,
    read_radiograph,
    write_bytes_atomic,
    write_files_atomic,
)
from jsnsynth.synth.layers import (DEFAULT_PIXEL_SPACING_MM, JointLayers, check_pixel_spacing, joint_frame_from_masks,
                                   mask_overlap_share)
from jsnsynth.synth.limits import MAX_CROP_FIELD_MM, MAX_MASK_OVERLAP, MAX_SIDE_PX, MIN_CROP_FIELD_MM
from jsnsynth.synth.phantom_io import SAMPLE_FILES as PHANTOM_SAMPLE_FILES
from jsnsynth.synth.xray import attenuation_to_intensity, intensity_to_attenuation, quantize

#: The bundled weights, inside the package.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "lsn_default.pt"
#: Pixel size the network was trained at (the nominal spacing of the finger-joint crops).
TRAINING_PIXEL_SPACING_MM = DEFAULT_PIXEL_SPACING_MM
#: Smallest crop side accepted, pixels.
MIN_SIZE_PX = 32
#: Least share of the crop a bone mask must cover for a separation to count as finding it.
MIN_BONE_SHARE = 0.002
#: Share of the crop beyond which the bone masks are implausible (real crops: at most 0.74).
MAX_BONE_SHARE = 0.95
#: Share of the crop below which a bone found is warned about as too little to be a joint's bone
#: (real crops: 0.18 or more each; a joint framed in a 90 mm field: about 0.07).
FEW_BONE_SHARE = 0.03
#: Relative spacing difference below which no resampling is done.
SPACING_TOLERANCE = 0.02
#: Revision of what :func:`separate_intensity` does besides the network (recorded by the ``lsn:``
#: dataset source): 2 separates a padded crop's picture alone and puts the bones back in order, 3
#: mirrors a fill (a turned crop's black corners) for the network and makes it soft tissue, 4
#: separates a crop whose joint leans by more than :data:`STRAIGHTEN_ABOVE_DEG` again turned upright.
SEPARATION_REVISION = 4
#: A crop whose joint axis, read from the network's first masks, leans by more than this (degrees)
#: is separated again turned upright (:func:`upright_logits`). Real crops lean by 4.7 deg (median),
#: 9.5 (90th percentile), 22 (99th): the network knows that spread, and beyond it loses the bones.
STRAIGHTEN_ABOVE_DEG = 10.0
#: A straightened crop whose joint still leans by more than this (degrees) is turned once more.
STRAIGHTEN_AGAIN_ABOVE_DEG = 2.0


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every (Conv2d, BatchNorm2d) pair of the model's sequential blocks into the conv.

    Inference only (eval-mode statistics); about a third faster on a CPU, same outputs to
    float32 rounding.
    """
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for k in range(len(children) - 1):
            conv, norm = children[k], children[k + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
            fused.weight.data = conv.weight.data * scale[:, None, None, None]
            fused.bias.data = (bias - norm.running_mean) * scale + norm.bias
            module[k] = fused
            module[k + 1] = nn.Identity()
    return model


def load_model(weights: str | os.PathLike | None = None) -> LayerSeparationNet:
    """Load LSN weights from a local file (default: the bundled weights), ready for inference.

    Raises:
        InputError: a missing or unreadable weights file.
    """
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    return _load_model_cached(str(path.resolve()) if path.exists() else str(path))


@lru_cache(maxsize=4)
def _load_model_cached(path_str: str) -> LayerSeparationNet:
    path = Path(path_str)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an LSN weights file (.pt)")
    if not path.is_file():
        raise InputError(f"{path}: no such LSN weights file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = LayerSeparationNet(ModelConfig.from_dict(payload["model"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except Exception as exc:  # torch raises many types for a wrong file
        raise InputError(f"{path}: not an LSN weights file ({exc.__class__.__name__})") from None
    model.eval()
    # channels-last memory layout: about 2x faster for these narrow convolutions on a CPU
    return fold_batchnorm(model).to(memory_format=torch.channels_last)


def check_crop(intensity: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate a crop: 2-D, at least :data:`MIN_SIZE_PX` and at most
    :data:`~jsnsynth.synth.limits.MAX_SIDE_PX` on each side, finite, in ``[0, 1]``.

    Raises:
        InputError: naming the problem.
    """
    intensity = np.asarray(intensity)
    if intensity.ndim != 2:
        raise InputError(f"{name}: expected a 2-D greyscale crop, got an array of shape {intensity.shape}")
    if min(intensity.shape) < MIN_SIZE_PX:
        raise InputError(
            f"{name}: crop is {intensity.shape[1]}x{intensity.shape[0]} px, at least {MIN_SIZE_PX}x{MIN_SIZE_PX} needed"
        )
    if max(intensity.shape) > MAX_SIDE_PX:
        raise InputError(f"{name}: crop is {intensity.shape[1]}x{intensity.shape[0]} px, at most {MAX_SIDE_PX} px a "
                         "side: separate takes joint crops; crop the image around the joint")
    if not np.all(np.isfinite(intensity)):
        raise InputError(f"{name}: crop contains NaN or infinite values")
    if intensity.min() < 0 or intensity.max() > 1:
        stored = (f" (a {intensity.dtype} array: divide by its full scale, or give the file to separate_files)"
                  if np.issubdtype(intensity.dtype, np.integer) else "")
        raise InputError(f"{name}: intensities must lie in [0, 1]{stored}")
    return intensity.astype(np.float64)


def _resize(values: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``(C, H, W)`` or ``(H, W)`` float arrays (area when shrinking, linear otherwise)."""
    if values.ndim == 3:
        return np.stack([_resize(v, size_hw) for v in values])
    height, width = size_hw
    shrink = height < values.shape[0] or width < values.shape[1]
    return cv2.resize(values.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _pad_to_multiple(values: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    height, width = values.shape
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return values, (0, 0)
    # Reflect needs the pad smaller than the image; symmetric-reflect repeatedly for tiny crops.
    padded = values
    while padded.shape[0] < height + pad_h or padded.shape[1] < width + pad_w:
        need_h = min(height + pad_h - padded.shape[0], padded.shape[0] - 1)
        need_w = min(width + pad_w - padded.shape[1], padded.shape[1] - 1)
        padded = np.pad(padded, ((0, need_h), (0, need_w)), mode="reflect")
    return padded, (pad_h, pad_w)


def predict_logits(model: LayerSeparationNet, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network logits ``(3, H, W)`` shares and ``(2, H, W)`` masks for one crop at its own size.

    The crop is reflect-padded to a multiple of 32 and the logits cropped back.
    """
    height, width = intensity.shape
    padded, _ = _pad_to_multiple(intensity, SIZE_MULTIPLE)
    with torch.inference_mode():
        x = torch.from_numpy(padded.astype(np.float32))[None, None]
        out = model(normalise_intensity(x).contiguous(memory_format=torch.channels_last))
    shares = np.ascontiguousarray(out["share_logits"][0, :, :height, :width].numpy())
    masks = np.ascontiguousarray(out["mask_logits"][0, :, :height, :width].numpy())
    return shares, masks


def _lean(mask_logits: np.ndarray, picture: np.ndarray) -> tuple[tuple[float, float], float] | None:
    """The joint centre ``(x, y)`` and axis (degrees from vertical) of two bones' mask logits,
    read within ``picture`` (a mirrored fill, and what a turn uncovers, hold ghosts of the bones);
    None when they make no joint: a bone missing, the bones side by side, or in the wrong order
    (taken as found: put in order, more turned crops were straightened wrongly in a probe)."""
    upper, lower = clean_mask((mask_logits[0] > 0) & picture), clean_mask((mask_logits[1] > 0) & picture)
    if not (upper.any() and lower.any()):
        return None
    try:
        return joint_frame_from_masks(upper, lower)
    except InputError:
        return None


def upright_logits(model: LayerSeparationNet, intensity: np.ndarray,
                   picture: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_logits`, with a leaning joint separated turned upright.

    The network learned joints as real crops hold them, leaning by up to about 20 deg; turned by
    30 or 45 deg, it lost much of the bones (held-out real crops, mask Dice 0.90 / 0.93 and 0.74 /
    0.81 upper / lower). When the first masks' joint axis leans by more than
    :data:`STRAIGHTEN_ABOVE_DEG`, the crop is turned about the joint centre until it is upright
    (mirrored where the turn uncovers the canvas, as for a fill), separated, and the logits are
    turned back; pixels whose turned place falls off the canvas keep the first logits. One more
    turn follows when the upright masks still lean by more than :data:`STRAIGHTEN_AGAIN_ABOVE_DEG`.
    A turned pass is kept only when its masks make a joint that leans less than the passes
    before it; the pass that leans least is returned. ``picture``: the crop's own pixels (not a
    fill mirrored into it; default all), where the masks' lean is read.
    """
    shares, mask_logits = predict_logits(model, intensity)
    picture_mask = np.ones(intensity.shape, bool) if picture is None else np.asarray(picture, bool)
    frame = _lean(mask_logits, picture_mask)
    if frame is None or abs(frame[1]) <= STRAIGHTEN_ABOVE_DEG:
        return shares, mask_logits
    (x, y), axis_deg = frame
    height, width = intensity.shape
    crop = intensity.astype(np.float32)
    best = None  # (turn matrix, upright shares, upright masks): the pass that leans least
    least_lean = abs(axis_deg)
    for _ in range(2):
        # a turn by the axis angle (counter-clockwise on screen for a positive one) stands the joint up
        matrix = cv2.getRotationMatrix2D((float(x), float(y)), float(axis_deg), 1.0)
        # on the crop's own canvas: on one that holds the whole turned crop, the network saw wide
        # mirrored margins and lost the bones (real crops turned by 45 deg: Dice 0.78 / 0.84)
        turned = cv2.warpAffine(crop, matrix, (width, height), flags=cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_REFLECT_101)
        upright_shares, upright_masks = predict_logits(model, np.clip(turned, 0.0, 1.0).astype(np.float64))
        turned_picture = cv2.warpAffine(picture_mask.astype(np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.5
        upright = _lean(upright_masks, turned_picture)
        # a turned pass counts only if it finds a joint that leans less than every pass before:
        # one that does not (a first axis misread, a crop the network is unsure of) would
        # replace good masks by worse ones (a 300x180 crop turned by 30 deg: Dice 0.98 -> 0.70)
        if upright is None or abs(upright[1]) >= least_lean:
            break
        least_lean = abs(upright[1])
        best = (matrix, upright_shares, upright_masks)
        if least_lean <= STRAIGHTEN_AGAIN_ABOVE_DEG:
            break
        # the upright centre carried back into the crop, and the lean left added to the turn
        x, y = cv2.invertAffineTransform(matrix) @ np.array([*upright[0], 1.0])
        axis_deg += upright[1]
    if best is None:
        return shares, mask_logits
    matrix, upright_shares, upright_masks = best
    back = cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR

    def turned_back(channels: np.ndarray) -> np.ndarray:
        return np.stack([cv2.warpAffine(channel, matrix, (width, height), flags=back, borderMode=cv2.BORDER_REPLICATE)
                         for channel in channels.astype(np.float32)])

    on_canvas = cv2.warpAffine(np.ones((height, width), np.float32), matrix, (width, height), flags=back,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.999
    shares = np.where(on_canvas, turned_back(upright_shares), shares).astype(shares.dtype)
    mask_logits = np.where(on_canvas, turned_back(upright_masks), mask_logits).astype(mask_logits.dtype)
    return shares, mask_logits


@dataclass
class Separation:
    """The result of separating one crop.

    Attributes:
        layers: the three layers, hard masks and joint geometry.
        upper_probability, lower_probability: ``(H, W)`` mask probabilities.
        recomposed: ``(H, W)`` display intensity ``1 - exp(-(soft + upper + lower))``.
    """

    layers: JointLayers
    upper_probability: np.ndarray
    lower_probability: np.ndarray
    recomposed: np.ndarray


def separate_intensity(
    intensity: np.ndarray,
    model: LayerSeparationNet | None = None,
    pixel_spacing_mm: float | None = None,
    name: str = "image",
) -> Separation:
    """Separate one crop into soft-tissue, upper- and lower-bone attenuation layers.

    Args:
        intensity: ``(H, W)`` display intensity in ``[0, 1]``, bone bright, joint axis vertical
            with the upper bone on top.
        model: a loaded model (default: the bundled weights).
        pixel_spacing_mm: the crop's pixel size; when it differs from the training spacing
            (0.175 mm/px) the crop is resampled for the network and the result brought back
            to the input grid. None: taken to be the training spacing.
        name: what error messages call the crop.

    Returns:
        A :class:`Separation`; its layers add up to ``-log(1 - intensity)`` (float32 rounding).

    Raises:
        InputError: a crop that is not 2-D, smaller than 32 px, non-finite or outside ``[0, 1]``.
    """
    intensity = check_crop(intensity, name)
    if pixel_spacing_mm is not None:
        pixel_spacing_mm = check_pixel_spacing(pixel_spacing_mm, name)
    field_mm = max(intensity.shape) * (TRAINING_PIXEL_SPACING_MM if pixel_spacing_mm is None else pixel_spacing_mm)
    if not MIN_CROP_FIELD_MM <= field_mm <= MAX_CROP_FIELD_MM:
        # the network sees the crop resampled to the training spacing: framing more than a finger,
        # its bones come out a fraction of the size it knows (a 256 px crop told 0.5 or 1 mm/px:
        # masks in fragments, and the JSN read with them 0.04 or 0.46 px for 0.33), or several
        # times it (a 2048 px crop taken at 0.175 mm/px: upper-mask Dice 0.26); framing less than
        # a joint, a small crop of a whole joint taken at the training spacing shows its bones a
        # fraction of their size too (a 40 px one was warned about only as 'inverted')
        wide = field_mm > MAX_CROP_FIELD_MM
        size = f"a {intensity.shape[1]}x{intensity.shape[0]} px crop"
        across = f"{field_mm:.0f} mm" if wide else f"{field_mm:.1f} mm"
        if pixel_spacing_mm is None:
            warnings.warn(f"{name}: {size} taken at {TRAINING_PIXEL_SPACING_MM} mm/px would be {across} across"
                          f"{'' if wide else ', less than a joint'}; give its pixel spacing (--pixel-spacing)",
                          stacklevel=2)
        else:
            than = (f"more than a joint's crop (up to {MAX_CROP_FIELD_MM:g} mm)" if wide
                    else f"less than a joint's crop ({MIN_CROP_FIELD_MM:g} mm or more)")
            warnings.warn(f"{name}: {size} at {pixel_spacing_mm:g} mm/px frames {across}, {than}; is its pixel "
                          "spacing right?", stacklevel=2)
    model = model if model is not None else load_model()
    # a crop padded to size: the network never saw a fill around a joint, and with 20 px of a
    # constant one it called the lower bone upper and the upper lower on 10 of 12 real crops.
    # Only the picture is separated; the padding is soft tissue of its own attenuation.
    content = content_box(intensity)
    top, bottom, left, right = content
    if content == (0, intensity.shape[0], 0, intensity.shape[1]) or bottom <= top or right <= left:
        # no padding, or nothing but (a constant crop: the network will find no bone in it)
        return _separate_picture(intensity, model, pixel_spacing_mm, name)
    if min(bottom - top, right - left) < MIN_SIZE_PX:
        raise InputError(f"{name}: the crop's rows or columns repeat exactly (read as padding): the picture left is "
                         f"{right - left}x{bottom - top} px, at least {MIN_SIZE_PX}x{MIN_SIZE_PX} needed")
    picture = _separate_picture(intensity[top:bottom, left:right], model, pixel_spacing_mm, name)
    return _embedded(picture, intensity, content)


#: A bone probability between these leaves a pixel undecided (:func:`undecided_fraction`).
UNDECIDED_PROBABILITY = (0.2, 0.8)


def undecided_fraction(separation: Separation) -> float:
    """Share of the crop's picture where the network leaves either bone's probability undecided:
    padding and fill, soft tissue by construction, are not counted (a crop turned by 45 deg on a
    canvas that keeps it whole had half its pixels in the corners, and was not warned about)."""
    low, high = UNDECIDED_PROBABILITY
    undecided = np.zeros(separation.upper_probability.shape, dtype=bool)
    for probability in (separation.upper_probability, separation.lower_probability):
        undecided |= (probability > low) & (probability < high)
    metadata = separation.layers.metadata
    top, bottom, left, right = metadata.get("picture_box", (0, undecided.shape[0], 0, undecided.shape[1]))
    picture_px = (bottom - top) * (right - left) - metadata.get("fill_px", 0)
    return float(np.count_nonzero(undecided) / max(picture_px, 1))


def looks_inverted(
    intensity: np.ndarray, separation: Separation, model: LayerSeparationNet, pixel_spacing_mm: float | None = None,
) -> bool:
    """Whether a crop seems stored with bone dark: the network is surer of its negative.

    A crop with bone dark (a PNG exported from a MONOCHROME1 image without its inversion) is
    separated without complaint into layers that are not bones (mask Dice 0.4-0.8 against the
    drawn masks). The network leaves more pixels undecided on such a crop than on its negative:
    over all 1,120 development crops their negatives left more pixels undecided than the crops as
    stored (1.24 times at the least; ``benchmarks/bench_lsn.py``). Costs a second separation.
    """
    with warnings.catch_warnings():  # the negative's own complaints are not the crop's
        warnings.simplefilter("ignore")
        negative = separate_intensity(1.0 - np.asarray(intensity, dtype=np.float64), model, pixel_spacing_mm)
    return undecided_fraction(negative) < undecided_fraction(separation)


#: A crop of which the network leaves more than this share of pixels undecided is warned about:
#: 7 of the 1,120 development crops (their masks' mean Dice against the drawn ones 0.91 / 0.82,
#: the other crops' 0.978 / 0.964), and crops unlike the upright joints it knows: of 56 real
#: crops, every one turned by 90 deg (benchmarks/bench_lsn.py).
UNSURE_FRACTION = 0.05


def warn_if_doubtful(intensity: np.ndarray, separation: Separation, model: LayerSeparationNet,
                     pixel_spacing_mm: float | None, name: str) -> None:
    """One warning, naming the crop, when its separation is not to be trusted: the crop looks
    inverted (:func:`looks_inverted`), or else the network leaves more than
    :data:`UNSURE_FRACTION` of its pixels undecided (:func:`undecided_fraction`)."""
    if looks_inverted(intensity, separation, model, pixel_spacing_mm):
        warnings.warn(f"{name}: the crop looks inverted (bone darker than soft tissue): the network is surer of its "
                      "negative, and its layers here are likely not bones; store crops with bone bright "
                      "(or the crop is unlike the upright joint crops the network knows)", stacklevel=3)
        return
    unsure = undecided_fraction(separation)
    if unsure > UNSURE_FRACTION:
        warnings.warn(f"{name}: the network is unsure of {100 * unsure:.1f}% of the crop's pixels (more than "
                      f"{100 * UNSURE_FRACTION:.0f}%), so its layers and masks may be wrong: it knows upright joint "
                      "crops (distal bone up, not turned), bone bright, at their pixel spacing", stacklevel=3)


def _embedded(picture: Separation, intensity: np.ndarray, content: tuple[int, int, int, int]) -> Separation:
    """The separation of a padded crop's picture put back into the crop: the padding is soft
    tissue, so the layers still add up to the crop's attenuation."""
    top, bottom, left, right = content
    box = (slice(top, bottom), slice(left, right))
    soft = intensity_to_attenuation(intensity).astype(np.float32)
    bones = {}
    for name in ("upper", "lower", "upper_mask", "lower_mask"):
        inner = getattr(picture.layers, name)
        bones[name] = np.zeros(intensity.shape, dtype=inner.dtype)
        bones[name][box] = inner
    soft[box] = picture.layers.soft
    probabilities = []
    for inner in (picture.upper_probability, picture.lower_probability):
        full = np.zeros(intensity.shape, dtype=np.float32)
        full[box] = inner
        probabilities.append(full)
    # the picture's frame, as the quantifier reads a padded crop's (quantifier.resolve_joint_frame)
    x, y = picture.layers.joint_center_xy
    metadata = dict(picture.layers.metadata, picture_box=list(content))
    layers = JointLayers(soft=soft, **bones, pixel_spacing_mm=picture.layers.pixel_spacing_mm,
                         joint_center_xy=(x + left, y + top), joint_axis_deg=picture.layers.joint_axis_deg,
                         metadata=metadata)
    recomposed = attenuation_to_intensity(layers.attenuation().astype(np.float64))
    return Separation(layers, probabilities[0], probabilities[1], recomposed)


def _separate_picture(
    intensity: np.ndarray, model: LayerSeparationNet, pixel_spacing_mm: float | None, name: str
) -> Separation:
    """:func:`separate_intensity` of a crop without padding."""
    spacing = TRAINING_PIXEL_SPACING_MM if pixel_spacing_mm is None else float(pixel_spacing_mm)
    height, width = intensity.shape
    # black corners around a crop turned upright: the network knows no fill around a joint (real
    # crops turned by 15 deg gave mask Dice 0.56 / 0.77 with them black, 0.98 / 0.96 with them
    # mirrored), so it sees the picture mirrored there, and the fill is soft tissue of its own
    # attenuation, as padding is
    fill = find_fill(intensity)
    work = fill_from_picture(intensity, fill)
    factor = spacing / TRAINING_PIXEL_SPACING_MM
    resample = abs(factor - 1.0) > SPACING_TOLERANCE
    if resample:
        size = (max(MIN_SIZE_PX, int(round(height * factor))), max(MIN_SIZE_PX, int(round(width * factor))))
        work = np.clip(_resize(work, size), 0.0, 1.0).astype(np.float64)
    picture = None
    if fill.any():  # the crop's own pixels, on the network's grid
        picture = ~fill if not resample else _resize(fill.astype(np.float32), work.shape) < 0.5
    shares, mask_logits = upright_logits(model, work, picture)
    if resample:
        shares = _resize(shares, (height, width))
        mask_logits = _resize(mask_logits, (height, width))
    if fill.any():
        mask_logits[:, fill] = -np.inf
    hard = np.stack([clean_mask(m > 0) for m in mask_logits])
    reordered = bool(hard[0].any() and hard[1].any()
                     and np.nonzero(hard[0])[0].mean() > np.nonzero(hard[1])[0].mean())
    if reordered:
        # the crops' convention puts the upper bone on top: a network that found its "upper"
        # bone below its "lower" one has swapped them (a crop unlike its training data)
        warnings.warn(f"{name}: the network's upper bone lay below its lower one; the two were swapped back "
                      "(check the crop: upper bone on top, joint axis vertical)", stacklevel=3)
        shares, mask_logits, hard = shares[[0, 2, 1]], mask_logits[::-1], hard[::-1]
    probabilities = 1.0 / (1.0 + np.exp(-mask_logits.astype(np.float64)))
    hard = hard.astype(np.float32)
    fractions = compose_fractions(torch.from_numpy(shares[None].astype(np.float32)), torch.from_numpy(hard[None]), factor)[0].numpy()
    fractions[:, fill] = np.array([1.0, 0.0, 0.0], dtype=fractions.dtype)[:, None]
    attenuation = intensity_to_attenuation(intensity).astype(np.float32)
    soft, upper, lower = (fractions * attenuation[None]).astype(np.float32)
    upper_mask, lower_mask = hard[0] > 0, hard[1] > 0
    try:
        centre, axis_deg = joint_frame_from_masks(upper_mask, lower_mask, picture=~fill if fill.any() else None)
        located = True
    except InputError:
        centre, axis_deg, located = ((width - 1) / 2.0, (height - 1) / 2.0), 0.0, False
    layers = JointLayers(
        soft=soft,
        upper=upper,
        lower=lower,
        upper_mask=upper_mask,
        lower_mask=lower_mask,
        pixel_spacing_mm=spacing,
        joint_center_xy=centre,
        joint_axis_deg=axis_deg,
        metadata={"source": "lsn", "joint_center_from_masks": located, "pixel_spacing_is_nominal": pixel_spacing_mm is None,
                  "bones_reordered": reordered, "fill_px": int(np.count_nonzero(fill))},
    )
    recomposed = attenuation_to_intensity(layers.attenuation().astype(np.float64))
    return Separation(layers, probabilities[0].astype(np.float32), probabilities[1].astype(np.float32), recomposed)


def check_separation(upper_mask: np.ndarray, lower_mask: np.ndarray, name: str = "image") -> None:
    """Refuse a separation that found no bone; warn when a bone found is a speck of the crop,
    the two masks overlap past what ``quantify`` takes, or the bones fill almost all of it.

    An empty bone mask means the crop is not a finger joint as the network knows one (bone
    bright, joint axis vertical, upper bone on top); the layers would be meaningless. A bone
    mask of a few per cent of the crop is what the network makes of a crop with no joint in it
    (a soft-tissue image, a smooth blob), and is warned about.

    Raises:
        InputError: a bone mask with less than :data:`MIN_BONE_SHARE` of the crop, naming it.
    """
    for bone, mask in (("upper", upper_mask), ("lower", lower_mask)):
        if mask.mean() < MIN_BONE_SHARE:
            raise InputError(f"{name}: no {bone} bone found (is it a finger-joint crop, bone bright, "
                             "joint axis vertical, upper bone on top?)")
    few = [f"{bone} {mask.mean():.1%}" for bone, mask in (("upper", upper_mask), ("lower", lower_mask))
           if mask.mean() < FEW_BONE_SHARE]
    if few:
        warnings.warn(f"{name}: little bone found ({', '.join(few)} of the crop, where a joint crop's bones cover "
                      "a fifth of it each); is it a finger-joint crop?", stacklevel=2)
    overlap = mask_overlap_share(upper_mask, lower_mask)
    if overlap > MAX_MASK_OVERLAP:
        # a collapsed joint, or a crop unlike the network's; quantify refused such masks with
        # advice meant for a hand's drawing ("give each bone its own mask")
        warnings.warn(f"{name}: the network's two bone masks overlap by {overlap:.0%} of the smaller, past what "
                      "'quantify' takes as two bones; the joint may be collapsed, or the crop unlike the joints the "
                      "network knows", stacklevel=2)
    covered = float((upper_mask | lower_mask).mean())
    if covered > MAX_BONE_SHARE:
        warnings.warn(f"{name}: the bone masks cover {covered:.0%} of the crop; check that bone is bright", stacklevel=2)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected piece of a bone mask and fill its holes.

    One bone is one connected region; small islands are soft-tissue structures the network
    mistook for bone, and they would be moved with the bone when a pair is synthesised.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return scipy.ndimage.binary_fill_holes(labels == largest)


def _display(attenuation: np.ndarray) -> np.ndarray:
    return np.clip(attenuation_to_intensity(np.asarray(attenuation, dtype=np.float64)), 0.0, 1.0)


#: The panel's tiles, as their titles name them.
PANEL_TITLES = ("input", "soft tissue", "upper bone", "lower bone", "masks", "recomposed")


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    """``tile`` under a white strip holding ``title`` in black, the font sized to the tile."""
    width = tile.shape[1]
    scale = min(0.5, 0.9 * width / (cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0] + 1))
    (text_w, text_h), base = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    strip = np.full((text_h + base + 6, width, 3), 255, np.uint8)
    cv2.putText(strip, title, ((width - text_w) // 2, text_h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def panel_image(intensity: np.ndarray, separation: Separation) -> np.ndarray:
    """An 8-bit RGB panel: input | soft | upper | lower | masks over input | recomposition, each
    tile titled (:data:`PANEL_TITLES`).

    Every layer is shown as ``1 - exp(-a)`` on the input's grey scale, so the tiles compare.
    """
    layers = separation.layers
    grey = [intensity, _display(layers.soft), _display(layers.upper), _display(layers.lower)]
    tiles = [np.repeat((np.clip(g, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2) for g in grey]
    overlay = tiles[0].astype(np.float32).copy()
    for mask, colour in ((layers.upper_mask, (255, 80, 40)), (layers.lower_mask, (40, 160, 255))):
        overlay[mask] = 0.55 * overlay[mask] + 0.45 * np.array(colour, np.float32)
    tiles.append(overlay.round().astype(np.uint8))
    recomposed = (np.clip(separation.recomposed, 0, 1) * 255).round().astype(np.uint8)
    tiles.append(np.repeat(recomposed[..., None], 3, axis=2))
    tiles = [_titled(tile, title) for tile, title in zip(tiles, PANEL_TITLES)]
    height = max(tile.shape[0] for tile in tiles)  # titles of one font size: strips of one height
    tiles = [np.pad(tile, ((height - tile.shape[0], 0), (0, 0), (0, 0)), constant_values=255) for tile in tiles]
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.concatenate(row, axis=1)


#: The record :func:`separate_files` keeps in its output folder of what each crop's files were
#: made from (input bytes, pixel spacing, weights, revision): a rerun skips the crops it shows done.
SEPARATION_RECORD = ".jsnsynth-separate.json"


@dataclass(frozen=True)
class SeparationRun:
    """What :func:`separate_files` did: ``panels``, one per crop separated (or already there), in
    the inputs' order; how many crops were ``resumed`` (already written by an earlier run of the
    same command); and the crops ``refused`` (no bone found), each with its one-line reason."""

    panels: list[Path]
    resumed: int
    refused: list[tuple[Path, str]]


def separate_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    pixel_spacing_mm: float | None = None,
    names: list[str] | None = None,
) -> SeparationRun:
    """Separate image files and write, per crop ``STEM``, into ``out_dir``:

    ``STEM_soft.tif``, ``STEM_upper.tif``, ``STEM_lower.tif`` (float32 attenuation),
    ``STEM_upper_mask.png``, ``STEM_lower_mask.png`` (8-bit 0/255), ``STEM_recomposed.png``
    (16-bit) and ``STEM_panel.png``.

    Every input is read and checked, and every output path checked, before anything is written.
    The crops are then separated one at a time, each crop's files written together or not at
    all, so that memory does not grow with the number of crops; an interrupted run leaves the
    crops before it complete, and the same command run again skips them (the folder's
    :data:`SEPARATION_RECORD` says what each crop's files were made from: the same input bytes,
    pixel spacing, weights and :data:`SEPARATION_REVISION`). A crop in which no bone is found
    (:func:`check_separation`) gets no files and is listed in the result's ``refused``; the
    other crops are still separated, so one odd crop does not cost a folder its run.

    Args:
        paths: radiograph crops (PNG, JPEG, TIFF, BMP, DICOM; 8 or 16 bit), or one.
        out_dir: output folder (created).
        weights: LSN weights file (default: the bundled weights).
        pixel_spacing_mm: the crops' pixel size; overrides a DICOM header's. None: the header's
            spacing when there is one, else the training spacing.
        names: each crop's ``STEM``, relative to ``out_dir`` (``joint/visit1`` writes into the
            sub-folder ``joint``); None: the files' stems.

    Returns:
        A :class:`SeparationRun`: the panel paths, how many crops were already there, and the
        crops refused because no bone was found in them.

    Raises:
        InputError: an unreadable, colour, too small or NaN-holding input, an implausible pixel
            spacing, or two inputs with the same name (before anything is written).
        OutputError: ``out_dir`` exists and is not a folder, or an output that cannot be written
            or would overwrite an input or another output.
    """
    if isinstance(paths, (str, os.PathLike)):  # one crop: a string was read as a list of its characters
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InputError("no input images given")
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    names = [Path(path).stem for path in paths] if names is None else list(names)
    if len(names) != len(paths):
        raise InputError(f"{len(names)} names for {len(paths)} crops")
    seen: set[str] = set()
    for path, name in zip(paths, names):
        parts = str(name).replace("\\", "/").split("/")
        if Path(name).is_absolute() or any(part in ("", ".", "..") for part in parts):  # written outside out_dir,
            # or as hidden files ("a/." wrote "a/._soft.tif")
            raise InputError(f"{path}: the name {name!r} must be a path inside the output folder")
        if name in seen:
            raise InputError(f"{path}: another input has the same name '{name}'; outputs would collide")
        seen.add(name)
    record_path = out_dir / SEPARATION_RECORD
    outputs = [out_dir / output for name in names for output in output_names(name)]
    check_outputs_apart([*outputs, record_path], paths)
    for output in (*outputs, record_path):
        check_writable(output)
    inputs = []
    for path, name in zip(paths, names):  # checked up front, kept only by name: read again when separated
        radiograph = read_radiograph(path)
        check_crop(radiograph.intensity, str(path))
        if two_values_only(radiograph.intensity):  # separated, a mask gave "bones" with warnings, exit 0
            raise InputError(f"{path}: holds two values only, as a mask does, not a radiograph crop")
        spacing = pixel_spacing_mm if pixel_spacing_mm is not None else radiograph.pixel_spacing_mm
        if spacing is not None:  # before the model loads: every crop is checked first
            check_pixel_spacing(spacing, "--pixel-spacing" if pixel_spacing_mm is not None else
                                f"{path} (DICOM header; give --pixel-spacing to override)")
        inputs.append((name, Path(path), spacing))
    model = load_model(weights)
    weights_digest = hashlib.sha256(Path(weights if weights is not None else DEFAULT_WEIGHTS).read_bytes()).hexdigest()
    record = _read_separation_record(record_path)
    panels, resumed, refused = [], 0, []
    for stem, path, spacing in inputs:
        made_from = {"input_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "pixel_spacing_mm": spacing,
                     "weights_sha256": weights_digest, "revision": SEPARATION_REVISION}
        panel = out_dir / f"{stem}_panel.png"
        if record.get(stem) == made_from and all((out_dir / name).is_file() for name in output_names(stem)):
            panels.append(panel)
            resumed += 1
            continue
        intensity = check_crop(read_radiograph(path).intensity, str(path))
        separation = separate_intensity(intensity, model, spacing, name=str(path))
        try:
            check_separation(separation.layers.upper_mask, separation.layers.lower_mask, str(path))
        except InputError as exc:
            refused.append((path, str(exc)))
            # files under this name are another input's (or a record lost): not this crop's
            for name in output_names(stem):
                (out_dir / name).unlink(missing_ok=True)
            if record.pop(stem, None) is not None:
                _write_separation_record(record_path, record)
            warnings.warn(f"{exc}; not separated", stacklevel=2)
            continue
        warn_if_doubtful(intensity, separation, model, spacing, str(path))
        files = _separation_files(out_dir, stem, intensity, separation)
        # the crop's old entry goes before its files change: interrupted between the two, a run
        # that recorded other files for the stem (another input, other weights) would skip it
        if record.pop(stem, None) is not None:
            _write_separation_record(record_path, record)
        # all of a crop's files or none: its layers without their masks are no use
        write_files_atomic(files)
        record[stem] = made_from
        _write_separation_record(record_path, record)
        panels.append(panel)
    return SeparationRun(panels, resumed, refused)


def _read_separation_record(path: Path) -> dict:
    """The crops an earlier run recorded (stem -> what its files were made from); none when there
    is no record or it cannot be read (everything is then separated again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_separation_record(path: Path, record: dict) -> None:
    write_bytes_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _separation_files(out_dir: Path, stem: str, intensity: np.ndarray, separation: Separation) -> dict[Path, bytes]:
    """The seven files of one crop's separation, path -> bytes."""
    layers = separation.layers
    files: dict[Path, bytes] = {}
    for layer_name in ("soft", "upper", "lower"):
        files[out_dir / f"{stem}_{layer_name}.tif"] = encode_float_tiff(getattr(layers, layer_name))
    files[out_dir / f"{stem}_upper_mask.png"] = encode_png(layers.upper_mask.astype(np.uint8) * 255)
    files[out_dir / f"{stem}_lower_mask.png"] = encode_png(layers.lower_mask.astype(np.uint8) * 255)
    files[out_dir / f"{stem}_recomposed.png"] = encode_png(quantize(separation.recomposed, 16))
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(panel_image(intensity, separation), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"{stem}: panel encoding failed")
    files[out_dir / f"{stem}_panel.png"] = buffer.tobytes()
    return files


#: What :func:`separate_files` appends to a crop's stem for each file it writes.
OUTPUT_SUFFIXES = ("soft.tif", "upper.tif", "lower.tif", "upper_mask.png", "lower_mask.png", "recomposed.png", "panel.png")


def output_names(stem: str) -> list[str]:
    """The file names :func:`separate_files` writes for the crop ``stem``."""
    return [f"{stem}_{suffix}" for suffix in OUTPUT_SUFFIXES]


def folder_crops(folder: str | os.PathLike) -> list[Path]:
    """The crops of a folder (:func:`~jsnsynth.synth.io.radiograph_files`) less what
    :func:`separate_files` wrote there: run again on its own output folder, it took its layers
    and masks for crops. A file named as an output is one when the folder's
    :data:`SEPARATION_RECORD` lists its stem, or every other output of its stem lies beside it;
    a crop merely named like one (``joint_panel.png``) is still a crop. Nor is ``STEM_soft``
    beside a crop ``STEM`` one: it is that crop's soft-tissue layer, as a finger-joint folder
    keeps it (:mod:`jsnsynth.synth.fingerjoints`; separated as a crop, a series folder gave twice
    its visits, the layers' with bones found in soft tissue). Nor are the layers of a sample
    ``jsnsynth phantom`` wrote (its ``radiograph.png`` is the crop): taken as crops, they stopped
    the run on a float image outside [0, 1]."""
    files = radiograph_files(folder)
    names = {path.name for path in files}
    if all((Path(folder) / name).is_file() for name in PHANTOM_SAMPLE_FILES):
        files = [path for path in files if path.name not in PHANTOM_SAMPLE_FILES or path.name == "radiograph.png"]
    recorded = _read_separation_record(Path(folder) / SEPARATION_RECORD)
    written: set[str] = set()
    for path in files:
        for suffix in OUTPUT_SUFFIXES:
            if path.name.endswith("_" + suffix):
                stem = path.name[: -len(suffix) - 1]
                outputs = output_names(stem)
                if stem in recorded or all(name in names for name in outputs):
                    written.update(outputs)
    stems = {path.stem for path in files if path.name not in written}
    soft_layers = {path.name for path in files if path.stem.endswith("_soft") and path.stem[: -len("_soft")] in stems}
    return [path for path in files if path.name not in written and path.name not in soft_layers]


def _holds_crops(folder: Path, suffixes: set[str]) -> bool:
    """Whether ``folder`` holds a radiograph crop (:func:`folder_crops`, not a drawn mask); a
    folder or image that cannot be read holds none, as far as a warning goes."""
    try:
        if not any(p.is_file() and p.suffix.lower() in suffixes for p in folder.iterdir()):
            return False
        return any(not two_values_only(read_radiograph(path).intensity) for path in folder_crops(folder))
    except (OSError, InputError):
        return False


def folder_tree_crops(root: str | os.PathLike, sub_folders: bool = True) -> list[tuple[Path, str]]:
    """The crops of a folder and of its sub-folders, each with the sub-folder it lies in (``""``
    for the folder itself): the folder's own first, then each sub-folder's, by name (one level;
    hidden ones are not searched). This is how ``jsnsynth separate`` and the ``lsn`` dataset
    source read a folder, where a sub-folder of crops is one joint's visits. Left out: images of
    two values only (drawn masks: a radiograph never has two values) and what
    :func:`separate_files` wrote (:func:`folder_crops`).

    ``sub_folders=False`` reads the folder itself only.

    Raises:
        InputError: a missing folder, one without crops in itself or in its sub-folders, or an
            image that cannot be read (naming it).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder of crops")
    suffixes = RASTER_SUFFIXES | DICOM_SUFFIXES
    folders = [(root, "")] + ([(p, p.name) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
                              if sub_folders else [])
    crops, deeper = [], []
    for folder, name in folders:
        if any(p.is_file() and p.suffix.lower() in suffixes for p in folder.iterdir()):
            crops.extend((path, name) for path in folder_crops(folder)
                         if not two_values_only(read_radiograph(path).intensity))
        if name:  # crops a level further down are not read: say so, rather than leave them out unsaid
            deeper.extend(p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
                          and _holds_crops(p, suffixes))
    if not crops:
        raise InputError(f"{root}: holds no radiograph crops, in itself or in sub-folders "
                         f"({', '.join(sorted(suffixes))}; images of two values are masks)")
    if deeper:
        warnings.warn(f"{len(deeper)} folder(s) two levels inside {root} hold images, which are not read (first: "
                      f"{deeper[0].relative_to(root)}): crops are read from the folder and its sub-folders, one "
                      "sub-folder a joint", stacklevel=2)
    return crops
