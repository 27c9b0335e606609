"""Training data of the Layer Separation Network: real crops, pseudo-overlaps and phantoms.

Every training example is a ``(input intensity, target fractions, masks, weight)`` tuple:

* the input is a display image ``I`` in ``[0, 1]`` (bone bright), what a user would pass in;
* the targets are the per-pixel *fractions* of the input attenuation ``a = -log(1 - I)`` that
  belong to the soft tissue, the upper and the lower bone (they add up to one), plus the two bone
  masks. The network predicts fractions too and multiplies them by ``a``, so the three predicted
  layers add up to the input attenuation by construction (see :mod:`jsnsynth.lsn.model`);
* a per-pixel mask-loss weight that down-weights the hand-drawn mask edges, which sit a pixel or
  two off the cortical edge (DESIGN.md), so the network is not taught those errors (the layer
  targets are continuous across the mask edges and are not down-weighted).

Three kinds of example, mixed by :class:`MixConfig`:

``real``
    a real development crop with its reference layers (:func:`reference_attenuations` or
    :func:`smooth_reference_attenuations`, chosen by ``MixConfig.soft_reference``);
``overlap``
    a pseudo-overlap: the upper-bone layer (and its mask) of a real crop is moved down toward the
    lower bone by more than the joint gap, with edge padding where the bone leaves the crop, and
    the layers are recomposed: the bones overlap and every layer is known exactly (the LSN paper's
    first training stage);
``phantom``
    a physics phantom (:mod:`jsnsynth.synth.phantom`) with exact layers, rendered
    through :func:`jsnsynth.synth.xray.render_radiograph` with sampled imaging parameters.

Every random step follows the toolkit's pattern: :func:`sample_example_params` draws an
:class:`ExampleParams` from a per-example ``SeedSequence([seed, index])``, :func:`make_example`
applies it deterministically.

Held-out split: whole joint series are held out, chosen by :func:`is_heldout_series`, a fixed
hash of the series id (``sha256(series_id) mod 100 < HELDOUT_PERCENT``), so the split never
depends on the file order or on the folder's contents.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.fingerjoints import read_manifest, soft_tissue_estimate, split_attenuation
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.io import read_mask, read_radiograph
from jsnsynth.synth.phantom import render_phantom, sample_phantom_params
from jsnsynth.synth.xray import (
    ImagingParams,
    ImagingRanges,
    detector_blur,
    intensity_to_attenuation,
    render_radiograph,
    sample_imaging_params,
)

#: Percentage of joint series held out from training (by a hash of the series id).
HELDOUT_PERCENT = 15
#: Width of the band around the reference mask edges where the reference is trusted less, px.
EDGE_BAND_PX = 2
#: Loss weight inside that band (1 elsewhere).
EDGE_BAND_WEIGHT = 0.15
KINDS = ("real", "overlap", "phantom")


def is_heldout_series(series_id: str, percent: int = HELDOUT_PERCENT) -> bool:
    """True when the joint series ``series_id`` belongs to the held-out evaluation split.

    The rule is ``int(sha256(series_id), 16) % 100 < percent``: deterministic, independent of
    file order, and it keeps every visit of a series on the same side of the split.
    """
    digest = hashlib.sha256(str(series_id).encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < percent


# ------------------------------------------------------------------------------------------
# Real-crop cache: one .npz with the 8-bit images, soft-tissue images and masks


@dataclass
class RealCache:
    """The real development crops in memory (what :func:`build_real_cache` stores).

    Attributes:
        image: ``(N, H, W)`` uint8 radiographs.
        soft: ``(N, H, W)`` uint8 soft-tissue (bone-free) images.
        upper_mask, lower_mask: ``(N, H, W)`` bool masks.
        series_id: ``(N,)`` series ids (str).
        name: ``(N,)`` record names ``series/stem``.
    """

    image: np.ndarray
    soft: np.ndarray
    upper_mask: np.ndarray
    lower_mask: np.ndarray
    series_id: np.ndarray
    name: np.ndarray

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def indices(self, heldout: bool) -> np.ndarray:
        """Indices of the held-out (``True``) or training (``False``) crops."""
        flags = np.array([is_heldout_series(s) for s in self.series_id])
        return np.flatnonzero(flags == heldout)


def build_real_cache(root: str | os.PathLike, cache_path: str | os.PathLike) -> RealCache:
    """Decode every crop of a finger-joint folder once and store it as one ``.npz``.

    Crops of another size than the first, or with an empty mask, are skipped (the loader would
    reject them too). The cache is written atomically; an existing cache is reused when every
    record it holds is still in the manifest (by name: delete the cache after changing crops
    that keep their names).

    Args:
        root: the finger-joint folder (``manifest.csv`` + images).
        cache_path: where the ``.npz`` goes (a gitignored folder such as ``runs/``).

    Returns:
        The loaded :class:`RealCache`.
    """
    cache_path = Path(cache_path)
    records = read_manifest(root)
    names = [r.name for r in records]
    if cache_path.is_file():
        cache = load_real_cache(cache_path)
        if set(cache.name.tolist()) <= set(names) and len(cache) > 0:
            return cache
    images, softs, uppers, lowers, series, kept = [], [], [], [], [], []
    shape = None
    for record in records:
        try:
            image = read_radiograph(record.image)
            soft = read_radiograph(record.soft_tissue)
            if shape is None:
                shape = image.intensity.shape
            if image.intensity.shape != shape or soft.intensity.shape != shape:
                continue
            upper = read_mask(record.mask_upper, shape)
            lower = read_mask(record.mask_lower, shape)
        except InputError:
            continue
        images.append(_to_uint8(image.intensity))
        softs.append(_to_uint8(soft.intensity))
        uppers.append(upper)
        lowers.append(lower)
        series.append(record.series_id)
        kept.append(record.name)
    if not images:
        raise InputError(f"{root}: no usable crops")
    cache = RealCache(
        image=np.stack(images),
        soft=np.stack(softs),
        upper_mask=np.stack(uppers),
        lower_mask=np.stack(lowers),
        series_id=np.array(series),
        name=np.array(kept),
    )
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.stem}.part.npz")
    np.savez(tmp, **asdict(cache))
    os.replace(tmp, cache_path)
    return cache


def _to_uint8(intensity: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(intensity, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_real_cache(cache_path: str | os.PathLike) -> RealCache:
    """Load a cache written by :func:`build_real_cache`."""
    with np.load(cache_path, allow_pickle=False) as data:
        return RealCache(**{k: data[k] for k in RealCache.__dataclass_fields__})


def reference_attenuations(
    image: np.ndarray, soft_image: np.ndarray, upper_mask: np.ndarray, lower_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference layers ``(soft, upper, lower)`` with the dataset's soft-tissue image as is, float32.

    The ablation rule (``soft_reference="dataset"``): :func:`jsnsynth.synth.fingerjoints.split_attenuation`
    of the bone signal ``max(a(image) - a(soft image), 0)``, so the soft layer keeps the
    soft-tissue image's bone-shaped dip under the bones. The real-data loader and the bundled model
    use :func:`smooth_reference_attenuations` instead.
    """
    total = _attenuation(image)
    return _float32(split_attenuation(total, _attenuation(soft_image), upper_mask, lower_mask))


def smooth_reference_attenuations(
    image: np.ndarray, soft_image: np.ndarray, upper_mask: np.ndarray, lower_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference layers ``(soft, upper, lower)`` by the real-data loader's rule, float32.

    The rule of :func:`jsnsynth.synth.fingerjoints.layers_from_images`: the soft tissue is the
    dataset's soft-tissue image filled smoothly under the bones
    (:func:`jsnsynth.synth.fingerjoints.soft_tissue_estimate`), so the soft layer has neither a
    bone-shaped hole nor rims; each bone gets its smooth share of the rest
    (:func:`jsnsynth.synth.fingerjoints.split_attenuation`).
    """
    total = _attenuation(image)
    soft_estimate = soft_tissue_estimate(total, _attenuation(soft_image), upper_mask, lower_mask)
    return _float32(split_attenuation(total, soft_estimate, upper_mask, lower_mask))


def _attenuation(image: np.ndarray) -> np.ndarray:
    return intensity_to_attenuation(image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image)


def _float32(layers: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return tuple(layer.astype(np.float32) for layer in layers)


# ------------------------------------------------------------------------------------------
# Sample, then apply


@dataclass(frozen=True)
class MixConfig:
    """How training examples are drawn.

    Attributes:
        crop_px: side of the square training crop (random crop of the 256 px source).
        p_real, p_overlap, p_phantom: probabilities of the three kinds (renormalised over the
            kinds that are available).
        overlap_px: ``(low, high)`` overlap depth of a pseudo-overlap beyond the joint gap, px.
        p_restyle: probability of re-rendering a real example's total attenuation through a
            sampled imaging chain (exposure / display / blur / noise randomisation).
        attenuation_scale: ``(low, high)`` factor applied to every layer when restyling.
        soft_reference: ``"dataset"`` (mask-based layers from the dataset's soft-tissue images,
            :func:`reference_attenuations`) or ``"smooth"`` (soft tissue under the bones filled
            smoothly from around them, :func:`smooth_reference_attenuations`).
    """

    crop_px: int = 128
    p_real: float = 0.45
    p_overlap: float = 0.3
    p_phantom: float = 0.25
    overlap_px: tuple[float, float] = (1.0, 10.0)
    p_restyle: float = 0.5
    attenuation_scale: tuple[float, float] = (0.7, 1.4)
    soft_reference: str = "dataset"

    @classmethod
    def from_dict(cls, record: dict) -> "MixConfig":
        """Build from a JSON record (lists become tuples)."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**values)


@dataclass(frozen=True)
class ExampleParams:
    """Every random choice behind one training example (replayable from its record).

    Attributes:
        kind: ``real``, ``overlap`` or ``phantom``.
        source_index: index into the real cache (or phantom pool).
        crop_x, crop_y: top-left corner of the training crop in the source.
        flip: mirror left-right.
        shift_px: downward displacement of the upper bone (pseudo-overlaps only), px.
        attenuation_scale: factor on every layer before restyling.
        imaging: the imaging chain of a restyled example (None: the source image as it is).
    """

    kind: str
    source_index: int
    crop_x: int
    crop_y: int
    flip: bool
    shift_px: int = 0
    attenuation_scale: float = 1.0
    imaging: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "ExampleParams":
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})


@dataclass
class ExamplePool:
    """The sources an example is drawn from: the real training crops and a phantom pool.

    Attributes:
        real: the real cache (or None).
        real_indices: which cache entries may be used (the training split).
        phantoms: list of ``(soft, upper, lower, upper_mask, lower_mask)`` float32/bool arrays.
        gaps_px: per real crop, the vertical joint gap (min over shared columns), px.
    """

    real: RealCache | None
    real_indices: np.ndarray
    phantoms: list = field(default_factory=list)
    gaps_px: np.ndarray | None = None

    def available_kinds(self) -> list[str]:
        """Kinds that can be drawn from this pool."""
        kinds = []
        if self.real is not None and len(self.real_indices):
            kinds += ["real", "overlap"]
        if self.phantoms:
            kinds.append("phantom")
        return kinds


def joint_gap_px(upper_mask: np.ndarray, lower_mask: np.ndarray) -> int:
    """Smallest vertical gap between the bottom of the upper and the top of the lower mask, px.

    Zero when the masks already touch or share no column.
    """
    rows = np.arange(upper_mask.shape[0])[:, None]
    bottom = np.where(upper_mask, rows, -1).max(axis=0)
    top = np.where(lower_mask, rows, upper_mask.shape[0]).min(axis=0)
    both = (bottom >= 0) & (top < upper_mask.shape[0])
    if not both.any():
        return 0
    return int(max(0, (top[both] - bottom[both] - 1).min()))


def make_pool(real: RealCache | None, real_indices: np.ndarray, phantoms: list | None = None) -> ExamplePool:
    """Bundle the sources and precompute the joint gaps the pseudo-overlaps need."""
    gaps = None
    if real is not None:
        gaps = np.array([joint_gap_px(real.upper_mask[i], real.lower_mask[i]) for i in range(len(real))])
    return ExamplePool(real=real, real_indices=np.asarray(real_indices), phantoms=list(phantoms or []), gaps_px=gaps)


def sample_example_params(rng: np.random.Generator, pool: ExamplePool, mix: MixConfig) -> ExampleParams:
    """Draw one :class:`ExampleParams` (what to make; :func:`make_example` makes it)."""
    kinds = pool.available_kinds()
    if not kinds:
        raise InputError("no training data: neither real crops nor phantoms are available")
    weights = np.array([{"real": mix.p_real, "overlap": mix.p_overlap, "phantom": mix.p_phantom}[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    if kind == "phantom":
        index = int(rng.integers(len(pool.phantoms)))
        height, width = pool.phantoms[index][0].shape
    else:
        index = int(pool.real_indices[rng.integers(len(pool.real_indices))])
        height, width = pool.real.image.shape[1:]
    crop = min(mix.crop_px, height, width)
    # Centre-biased crops: most of the information (and every test crop) is around the joint.
    crop_x = int(np.clip(rng.normal((width - crop) / 2, (width - crop) / 4), 0, width - crop))
    crop_y = int(np.clip(rng.normal((height - crop) / 2, (height - crop) / 4), 0, height - crop))
    shift = 0
    if kind == "overlap":
        shift = int(pool.gaps_px[index] + math.ceil(rng.uniform(*mix.overlap_px)))
    imaging = None
    scale = 1.0
    if kind == "phantom" or rng.uniform() < mix.p_restyle:
        scale = float(rng.uniform(*mix.attenuation_scale))
        imaging = sample_imaging_params(rng, ImagingRanges(), noise=bool(rng.uniform() < 0.8)).to_dict()
    return ExampleParams(
        kind=kind,
        source_index=index,
        crop_x=crop_x,
        crop_y=crop_y,
        flip=bool(rng.uniform() < 0.5),
        shift_px=shift,
        attenuation_scale=scale,
        imaging=imaging,
    )


def shift_down_edge(values: np.ndarray, shift_px: int) -> np.ndarray:
    """Move an image down by a whole number of rows, repeating the top row (edge padding).

    A bone that runs off the top of the crop is extended, not emptied, when it moves in.
    """
    if shift_px <= 0:
        return values.copy()
    top = np.repeat(values[:1], shift_px, axis=0)
    return np.concatenate([top, values[:-shift_px]], axis=0)


@dataclass
class Example:
    """One training example (float32 arrays of the crop size).

    Attributes:
        image: display intensity in ``[0, 1]``, the network input.
        fractions: ``(3, H, W)`` soft/upper/lower shares of the input attenuation (sum 1).
        masks: ``(2, H, W)`` upper/lower bone masks (0/1).
        weight: ``(H, W)`` per-pixel loss weight.
    """

    image: np.ndarray
    fractions: np.ndarray
    masks: np.ndarray
    weight: np.ndarray


def _edge_band(mask: np.ndarray, width_px: int) -> np.ndarray:
    kernel = np.ones((2 * width_px + 1, 2 * width_px + 1), np.uint8)
    mask8 = mask.astype(np.uint8)
    return (cv2.dilate(mask8, kernel) != cv2.erode(mask8, kernel))


def source_layers(pool: ExamplePool, params: ExampleParams, soft_reference: str = "dataset") -> tuple[np.ndarray, ...]:
    """The full-size ``(intensity or None, soft, upper, lower, upper_mask, lower_mask)`` of an example.

    ``intensity`` is the real radiograph for an unrestyled real example (so the network sees the
    real JPEG, not a re-rendering), else None.
    """
    if params.kind == "phantom":
        soft, upper, lower, upper_mask, lower_mask = pool.phantoms[params.source_index]
        return None, soft, upper, lower, upper_mask, lower_mask
    real = pool.real
    i = params.source_index
    reference = {"dataset": reference_attenuations, "smooth": smooth_reference_attenuations}.get(soft_reference)
    if reference is None:
        raise InputError(f"unknown soft_reference '{soft_reference}' (expected 'dataset' or 'smooth')")
    soft, upper, lower = reference(real.image[i], real.soft[i], real.upper_mask[i], real.lower_mask[i])
    upper_mask, lower_mask = real.upper_mask[i], real.lower_mask[i]
    if params.kind == "overlap":
        upper = shift_down_edge(upper, params.shift_px)
        upper_mask = shift_down_edge(upper_mask, params.shift_px)
        # The soft tissue under the moved bone: the reference soft layer (inpainted there).
        return None, soft, upper, lower, upper_mask, lower_mask
    intensity = real.image[i].astype(np.float64) / 255.0
    return intensity, soft, upper, lower, upper_mask, lower_mask


def make_example(pool: ExamplePool, params: ExampleParams, mix: MixConfig) -> Example:
    """Apply ``params``: build the layers, crop, flip, render the input, derive targets."""
    intensity, soft, upper, lower, upper_mask, lower_mask = source_layers(pool, params, mix.soft_reference)
    crop = min(mix.crop_px, soft.shape[0], soft.shape[1])
    window = (slice(params.crop_y, params.crop_y + crop), slice(params.crop_x, params.crop_x + crop))
    layers = np.stack([soft[window], upper[window], lower[window]]).astype(np.float64) * params.attenuation_scale
    masks = np.stack([upper_mask[window], lower_mask[window]]).astype(np.float32)
    if params.imaging is not None:
        image = render_radiograph(layers.sum(axis=0), ImagingParams.from_dict(params.imaging))
    elif intensity is not None:
        image = intensity[window]
    else:
        image = -np.expm1(-layers.sum(axis=0))
    blur_px = float(params.imaging.get("blur_sigma_px", 0.0)) if params.imaging is not None else 0.0
    if blur_px > 0:
        # The detector blur spreads each bone's edge beyond its mask: the blurred rim is bone.
        layers = np.stack([detector_blur(layer, blur_px) for layer in layers])
    total = layers.sum(axis=0)
    # Where the reference has no attenuation at all, call it soft tissue.
    fractions = np.where(total > 1e-6, layers / np.maximum(total, 1e-6), np.array([1.0, 0.0, 0.0])[:, None, None])
    weight = np.ones(masks.shape[1:], np.float32)
    if params.kind != "phantom":  # hand-drawn reference masks: trust them less at their edges
        band = _edge_band(masks[0] > 0, EDGE_BAND_PX) | _edge_band(masks[1] > 0, EDGE_BAND_PX)
        weight[band] = EDGE_BAND_WEIGHT
    if params.flip:
        image, fractions, masks, weight = image[:, ::-1], fractions[..., ::-1], masks[..., ::-1], weight[:, ::-1]
    return Example(
        image=np.ascontiguousarray(image, dtype=np.float32),
        fractions=np.ascontiguousarray(fractions, dtype=np.float32),
        masks=np.ascontiguousarray(masks, dtype=np.float32),
        weight=np.ascontiguousarray(weight, dtype=np.float32),
    )


def make_batch(pool: ExamplePool, mix: MixConfig, seed: int, step: int, batch_size: int) -> tuple[dict, list[dict]]:
    """Examples ``step * batch_size ...`` of the stream seeded by ``seed``, stacked.

    Example ``k`` is drawn from ``SeedSequence([seed, k])``, so a resumed run continues with the
    same examples it would have seen.

    Returns:
        ``(arrays, records)``: a dict of stacked float32 arrays (``image (B,1,H,W)``,
        ``fractions (B,3,H,W)``, ``masks (B,2,H,W)``, ``weight (B,1,H,W)``) and the
        :class:`ExampleParams` records.
    """
    examples, records = [], []
    for k in range(step * batch_size, (step + 1) * batch_size):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        params = sample_example_params(rng, pool, mix)
        examples.append(make_example(pool, params, mix))
        records.append(params.to_dict())
    arrays = {
        "image": np.stack([e.image for e in examples])[:, None],
        "fractions": np.stack([e.fractions for e in examples]),
        "masks": np.stack([e.masks for e in examples]),
        "weight": np.stack([e.weight for e in examples])[:, None],
    }
    return arrays, records


def render_phantom_pool(count: int, seed: int) -> list:
    """Render ``count`` phantoms' exact layers; phantom ``k`` uses ``SeedSequence([seed, k])``."""
    pool = []
    for k in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        params = sample_phantom_params(rng)
        pose = None
        if k % 2 == 1:  # every other phantom: the upper bone pushed into the lower one (overlap)
            layers = render_phantom(params)
            gap_px = float(layers.metadata.get("jsw_mm", 1.0)) / layers.pixel_spacing_mm
            cx, cy = layers.joint_center_xy
            shift_px = gap_px + float(rng.uniform(1.0, 8.0))
            ax, ay = layers.axis_xy
            pose = Similarity(dx=shift_px * float(ax), dy=shift_px * float(ay), cx=cx, cy=cy)
        layers = render_phantom(params, upper_pose=pose)
        pool.append((layers.soft, layers.upper, layers.lower, layers.upper_mask, layers.lower_mask))
    return pool


