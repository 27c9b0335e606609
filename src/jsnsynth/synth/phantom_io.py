"""Writing phantom samples to disk (the ``jsnsynth phantom`` command) and reading them back.

On-disk format (one folder per sample, see docs/phantom.md)::

    OUT/phantom_00000/
        radiograph.png     16-bit PNG, the phantom through the sampled imaging chain (bone bright)
        soft.tiff          float32 TIFF, soft-tissue attenuation layer (background included)
        upper.tiff         float32 TIFF, upper-bone attenuation layer
        lower.tiff         float32 TIFF, lower-bone attenuation layer
        upper_mask.png     8-bit PNG, 255 where upper.tiff > 0, else 0
        lower_mask.png     8-bit PNG, 255 where lower.tiff > 0, else 0
        record.json        every sampled parameter and the ground truth (see write_phantom_sample)

Sample ``i`` draws everything from ``numpy.random.SeedSequence([seed, i])``: the phantom first,
then the imaging chain, so the same seed gives the same bytes. Each sample folder is written
under a temporary name and renamed when complete; a rerun skips complete samples.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jsnsynth import __version__
from jsnsynth.errors import InputError, OutputError
from jsnsynth.synth.io import (
    atomic_directory,
    encode_float_tiff,
    encode_png,
    make_output_folder,
    read_float_tiff,
    read_mask,
    read_radiograph,
    remove_partial_outputs,
    write_bytes_atomic,
)
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM, JointLayers, check_pixel_spacing
from jsnsynth.synth.phantom import (
    JOINT_TYPES,
    PhantomParams,
    check_phantom_field,
    check_phantom_size,
    render_phantom,
    sample_phantom_params,
)
from jsnsynth.synth.xray import ImagingParams, quantize, render_radiograph, sample_imaging_params
from jsnsynth.threads import single_threaded

SAMPLE_PREFIX = "phantom_"
SAMPLE_PATTERN = re.compile(r"^phantom_\d{5,}$")
#: Leftovers of an interrupted run (atomic_directory's temporary folders); removed on resume.
PARTIAL_PATTERN = re.compile(r"^\.phantom_\d{5,}\..*\.part$")
SAMPLE_FILES = (
    "radiograph.png", "soft.tiff", "upper.tiff", "lower.tiff", "upper_mask.png", "lower_mask.png", "record.json",
)
RECORD_FORMAT = "jsnsynth-phantom-sample/1"


@dataclass(frozen=True)
class PhantomSettings:
    """The command-line settings that every sample of a run shares (recorded in each sample).

    Attributes:
        seed: base seed; sample ``i`` uses ``SeedSequence([seed, i])``.
        size_px: crop size, pixels.
        pixel_spacing_mm: pixel size, millimetres.
        joint_type: ``mcp``, ``pip``, ``dip`` or ``random``.
        noise: whether the radiograph carries quantum and electronic noise.
    """

    seed: int = 0
    size_px: int = 256
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
    joint_type: str = "random"
    noise: bool = True

    def __post_init__(self) -> None:
        if self.joint_type not in (*JOINT_TYPES, "random"):
            raise InputError(f"joint type must be one of {', '.join(JOINT_TYPES)} or random, got {self.joint_type!r}")
        check_phantom_size(self.size_px)
        check_pixel_spacing(self.pixel_spacing_mm, "phantom")  # the range every command shares
        check_phantom_field(self.size_px, self.pixel_spacing_mm)
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"seed": int(self.seed), "size_px": int(self.size_px), "pixel_spacing_mm": float(self.pixel_spacing_mm),
                "joint_type": self.joint_type, "noise": bool(self.noise)}


def sample_folder_name(index: int) -> str:
    """``phantom_00000`` for index 0."""
    return f"{SAMPLE_PREFIX}{index:05d}"


def make_phantom_sample(settings: PhantomSettings, index: int) -> tuple[JointLayers, ImagingParams, np.ndarray, dict]:
    """Draw, render and record sample ``index`` of a run (no file I/O).

    Returns:
        ``(layers, imaging, radiograph_uint16, record)``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(settings.seed), int(index)]))
    params = sample_phantom_params(rng, joint_type=settings.joint_type, size_px=settings.size_px,
                                   pixel_spacing_mm=settings.pixel_spacing_mm)
    imaging = sample_imaging_params(rng, noise=settings.noise)
    layers = render_phantom(params)
    radiograph = quantize(render_radiograph(layers.attenuation(), imaging), 16)
    record = phantom_record(params, imaging, layers, settings, index)
    return layers, imaging, radiograph, record


def phantom_record(params: PhantomParams, imaging: ImagingParams, layers: JointLayers, settings: PhantomSettings,
                   index: int) -> dict[str, Any]:
    """The ``record.json`` content of one sample: every sampled parameter and the ground truth."""
    axis = layers.axis_xy
    return {
        "format": RECORD_FORMAT,
        "jsnsynth_version": __version__,
        "index": int(index),
        "seed": int(settings.seed),
        "seed_sequence": [int(settings.seed), int(index)],
        "settings": settings.to_dict(),
        "pixel_spacing_mm": float(params.pixel_spacing_mm),
        "size_px": int(params.size_px),
        "jsw_mm": float(params.jsw_mm),
        "jsw_px": float(params.jsw_mm / params.pixel_spacing_mm),
        "joint_center_xy": [float(v) for v in layers.joint_center_xy],
        "joint_axis_deg": float(layers.joint_axis_deg),
        "joint_axis_xy": [float(axis[0]), float(axis[1])],
        "phantom_params": params.to_dict(),
        "imaging_params": imaging.to_dict(),
        "files": {
            "radiograph": "radiograph.png",
            "soft": "soft.tiff",
            "upper": "upper.tiff",
            "lower": "lower.tiff",
            "upper_mask": "upper_mask.png",
            "lower_mask": "lower_mask.png",
        },
    }


def _mask_png(mask: np.ndarray) -> bytes:
    return encode_png(np.where(mask, 255, 0).astype(np.uint8))


def write_phantom_sample(folder: str | os.PathLike, settings: PhantomSettings, index: int) -> Path:
    """Render sample ``index`` and write its folder atomically (replacing an existing one).

    Returns:
        The sample folder.
    """
    folder = Path(folder)
    layers, _, radiograph, record = make_phantom_sample(settings, index)
    with atomic_directory(folder) as tmp:
        (tmp / "radiograph.png").write_bytes(encode_png(radiograph))
        for name in ("soft", "upper", "lower"):
            (tmp / f"{name}.tiff").write_bytes(encode_float_tiff(getattr(layers, name)))
        (tmp / "upper_mask.png").write_bytes(_mask_png(layers.upper_mask))
        (tmp / "lower_mask.png").write_bytes(_mask_png(layers.lower_mask))
        (tmp / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return folder


def _check_output_folder(out_dir: Path) -> None:
    """Refuse a path that is a file or a folder holding anything but phantom samples."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if not out_dir.is_dir():
        return
    unrelated = sorted(
        entry.name for entry in out_dir.iterdir()
        if not (entry.is_dir() and (SAMPLE_PATTERN.match(entry.name) or PARTIAL_PATTERN.match(entry.name)))
    )
    if unrelated:
        shown = ", ".join(unrelated[:3]) + (", ..." if len(unrelated) > 3 else "")
        raise OutputError(f"{out_dir}: folder holds files that are not phantom samples ({shown}); use a new or empty folder")


def _is_complete(folder: Path, settings: PhantomSettings, index: int) -> bool:
    """True when ``folder`` holds a complete sample of this run; raises if it is from another run."""
    record_path = folder / "record.json"
    if not all((folder / name).is_file() for name in SAMPLE_FILES):
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    if record.get("settings") != settings.to_dict():
        raise OutputError(
            f"{folder}: written by a run with other settings ({_settings_differing(record.get('settings'), settings)}); "
            "use a new --out folder or the same options"
        )
    if record.get("index") != index:
        raise OutputError(f"{folder}: its record is of sample {record.get('index')}, not {index} (a renamed or copied "
                          "folder); use a new --out folder")
    return True


#: The command-line option of each of :class:`PhantomSettings`' fields.
_OPTION_OF = {"seed": "--seed", "size_px": "--size", "pixel_spacing_mm": "--pixel-spacing",
              "joint_type": "--joint-type", "noise": "--noise"}


def _settings_differing(earlier: Any, now: PhantomSettings) -> str:
    """The options in which a sample's recorded settings differ from this run's, as
    ``--size 64, now 128`` (as ``jsnsynth dataset`` names them); the whole record where it is
    not one of settings."""
    current = now.to_dict()
    if not isinstance(earlier, dict) or set(earlier) != set(current):
        return f"recorded settings {earlier}"

    def change(name: str) -> str:
        if name == "noise":  # a flag: named both times
            return f"{'--noise' if earlier[name] else '--no-noise'}, now {'--noise' if current[name] else '--no-noise'}"
        return f"{_OPTION_OF.get(name, name)} {earlier[name]}, now {current[name]}"

    return "; ".join(change(name) for name in current if earlier[name] != current[name])


def write_phantom_samples(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    size_px: int = 256,
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM,
    joint_type: str = "random",
    noise: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, int, int]:
    """Write ``n`` phantom samples into ``out_dir`` (resuming an interrupted run).

    Args:
        out_dir: new, empty, or holding samples of the same run.
        n: number of samples, >= 1.
        seed: base seed.
        size_px: crop size, pixels.
        pixel_spacing_mm: pixel size, mm.
        joint_type: ``mcp``, ``pip``, ``dip`` or ``random``.
        noise: add the sampled quantum and electronic noise to the radiographs.
        progress: optional callback ``(done, n)`` after each sample.

    Returns:
        ``(out_dir, written, skipped)``.

    Raises:
        InputError: bad settings (``n < 1``, unknown joint type, ...).
        OutputError: ``out_dir`` is a file, holds unrelated files, samples of another run, or
            samples beyond the ``n`` asked for (a larger ``n`` extends a run).
    """
    if n < 1:
        raise InputError(f"number of phantoms must be >= 1, got {n}")
    settings = PhantomSettings(seed=seed, size_px=size_px, pixel_spacing_mm=pixel_spacing_mm,
                               joint_type=joint_type, noise=noise)
    out_dir = Path(out_dir)
    _check_output_folder(out_dir)
    # a run of n samples (or an interrupted one) holds none beyond them; a smaller n reported its
    # samples as "already there" and left the folder holding more than asked for
    beyond = [entry for entry in out_dir.glob(f"{SAMPLE_PREFIX}*")
              if SAMPLE_PATTERN.match(entry.name) and int(entry.name[len(SAMPLE_PREFIX):]) >= n]
    if beyond:
        last = max(int(entry.name[len(SAMPLE_PREFIX):]) for entry in beyond)
        raise OutputError(f"{out_dir}: holds samples up to {sample_folder_name(last)}, beyond the {n} asked for; give "
                          f"--n {last + 1} or more to resume or extend the run, or use a new folder")
    # every sample there is checked before any is written (each record read once): one of
    # another run, found half-way, left the folder with new samples beside it
    complete = {index for index in range(n)
                if (out_dir / sample_folder_name(index)).is_dir()
                and _is_complete(out_dir / sample_folder_name(index), settings, index)}
    make_output_folder(out_dir)
    remove_partial_outputs(out_dir)
    written = skipped = 0
    with single_threaded():  # the same bytes on any machine (jsnsynth.threads)
        for index in range(n):
            folder = out_dir / sample_folder_name(index)
            if index in complete:
                skipped += 1
            else:
                write_phantom_sample(folder, settings, index)
                written += 1
            if progress is not None:
                progress(index + 1, n)
    return out_dir, written, skipped


def read_phantom_sample(folder: str | os.PathLike) -> tuple[JointLayers, dict[str, Any]]:
    """Read a sample folder back as :class:`JointLayers` and its record.

    Raises:
        InputError: missing files, an unreadable record, or layers that disagree with the masks.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such sample folder")
    try:
        record = json.loads((folder / "record.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: no record.json (not a phantom sample)") from None
    except ValueError as exc:
        raise InputError(f"{folder / 'record.json'}: not valid JSON ({exc})") from None
    soft, upper, lower = (read_float_tiff(folder / f"{name}.tiff") for name in ("soft", "upper", "lower"))
    upper_mask = read_mask(folder / "upper_mask.png", soft.shape)
    lower_mask = read_mask(folder / "lower_mask.png", soft.shape)
    layers = JointLayers(
        soft=soft, upper=upper, lower=lower, upper_mask=upper_mask, lower_mask=lower_mask,
        pixel_spacing_mm=record["pixel_spacing_mm"], joint_center_xy=tuple(record["joint_center_xy"]),
        joint_axis_deg=record["joint_axis_deg"],
        metadata={"source": "phantom", "phantom_params": record["phantom_params"], "jsw_mm": record["jsw_mm"]},
    )
    return layers, record


def _to_display_u8(values: np.ndarray, high: float) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=np.float64) / high * 255.0, 0, 255).astype(np.uint8)


def write_phantom_panel(sample_folders: list[Path], out_path: str | os.PathLike) -> Path:
    """Write an 8-bit PNG contact sheet of phantom samples, one column per sample.

    Rows: the radiograph, the soft-tissue layer, the two bone layers, and the two masks (upper
    in white, lower in grey). Layers share one attenuation scale, so they can be compared.

    Raises:
        InputError: a folder that is not a complete phantom sample.
    """
    if not sample_folders:
        raise InputError("no phantom samples to show")
    columns = []
    for folder in sample_folders:
        layers, _ = read_phantom_sample(folder)
        radiograph = _radiograph_u8(Path(folder) / "radiograph.png")
        high = float(max(layers.attenuation().max(), 1e-6))
        masks = np.where(layers.upper_mask, 255, np.where(layers.lower_mask, 128, 0)).astype(np.uint8)
        tiles = [radiograph, _to_display_u8(layers.soft, high), _to_display_u8(layers.upper + layers.lower, high), masks]
        columns.append(np.concatenate([np.pad(t, 2, constant_values=255) for t in tiles], axis=0))
    panel = np.concatenate(columns, axis=1)
    out_path = Path(out_path)
    write_bytes_atomic(out_path, encode_png(panel))
    return out_path


def _radiograph_u8(path: Path) -> np.ndarray:
    """A radiograph file as 8-bit display pixels (for panels only; data stay 16-bit)."""
    return np.rint(read_radiograph(path).intensity * 255.0).astype(np.uint8)
