"""Reading radiographs and masks, writing lossless 16-bit images, and atomic file output.

Radiographs are read as 8- or 16-bit PNG, JPEG, TIFF or DICOM and returned as float64 display
intensity in ``[0, 1]`` (bone bright) by dividing by the format's full scale. DICOM pixel spacing
comes from PixelSpacing, else ImagerPixelSpacing; MONOCHROME1 images are inverted so that bone is
bright. Every failure is an :class:`~jsnsynth.errors.InputError` that names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import cv2
import numpy as np

from jsnsynth.errors import InputError, OutputError, exception_line
from jsnsynth.picture import looks_like_a_picture
from jsnsynth.synth.limits import MAX_SIDE_PX, MIN_LONG_SIDE_PX, MIN_SIDE_PX

DICOM_SUFFIXES = {".dcm", ".dicom"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def files_digest(files: Mapping[str, Path]) -> str:
    """SHA-256 of named files' names and contents, in name order: what a dataset run read from
    its source, so that resuming it on other files is refused. Name each file by what it is to
    the run (its place in the source folder, ``weights``), not by where it happens to be."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = Path(files[name]).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def check_measurable_size(shape: tuple[int, ...], path: str | os.PathLike) -> None:
    """Refuse a source crop of which the quantifier could not measure a pair (smaller than
    :data:`~jsnsynth.synth.limits.MIN_SIDE_PX` a side or :data:`~jsnsynth.synth.limits.MIN_LONG_SIDE_PX`
    on the longer one, or larger than :data:`~jsnsynth.synth.limits.MAX_SIDE_PX`): its pairs'
    labels would be exact, and unmeasurable.

    Raises:
        InputError: naming the file and its size.
    """
    if min(shape) < MIN_SIDE_PX or max(shape) < MIN_LONG_SIDE_PX:
        raise InputError(f"{path}: crop is {shape[1]}x{shape[0]} px; the quantifier measures pairs of at least "
                         f"{MIN_SIDE_PX}x{MIN_SIDE_PX} px with a longer side of {MIN_LONG_SIDE_PX}")
    if max(shape) > MAX_SIDE_PX:
        raise InputError(f"{path}: crop is {shape[1]}x{shape[0]} px; the quantifier measures joint crops of at most "
                         f"{MAX_SIDE_PX} px a side")


def radiograph_files(folder: str | os.PathLike) -> list[Path]:
    """The radiographs of a folder (not its subfolders), by name: files with a raster or DICOM suffix.

    Raises:
        InputError: a missing folder, or one that holds none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of crops")
    suffixes = RASTER_SUFFIXES | DICOM_SUFFIXES
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"{folder}: holds no radiograph crops ({', '.join(sorted(suffixes))})")
    return files


@dataclass
class Radiograph:
    """A radiograph read from disk.

    Attributes:
        intensity: ``(H, W)`` float64 display intensity in ``[0, 1]``, bone bright.
        bit_depth: bits of the stored pixels (8 or 16; DICOM's BitsStored; 32 or 64 for a float TIFF).
        pixel_spacing_mm: pixel size from the file's header, or None when the format has none.
        path: where it was read from.
    """

    intensity: np.ndarray
    bit_depth: int
    pixel_spacing_mm: float | None
    path: Path


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    return path


#: One file decoded at a time: while it is, file descriptor 2 (the process's stderr) points to a
#: capture file, which is the process's, not the thread's. What another thread writes to stderr
#: meanwhile is captured with the decoder's lines (nothing in jsnsynth does; its workers are
#: processes).
_DECODE_LOCK = threading.Lock()

#: Decoder lines about a file's ancillary data that leave its pixels as they are (libpng's notes
#: on colour profiles, text and time chunks): not worth a warning.
_HARMLESS_DECODER_LINE = re.compile(r"libpng warning: (iCCP|sRGB|gAMA|cHRM|tEXt|zTXt|iTXt|tIME|pHYs|bKGD)\b")


#: Most of a decoder's report that a warning quotes.
MAX_DECODER_REPORT_BYTES = 600


def _jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG's markers lead to its end-of-image marker before the file ends.

    libjpeg decodes a JPEG cut short, fills the missing rows with grey and only warns: the image
    would be measured as if it were whole. The walk skips each header segment by its stated
    length (a thumbnail's markers sit inside one) and each scan's entropy-coded data to the next
    marker that is neither a stuffed ``FF 00`` nor a restart marker; whatever follows the
    end-of-image marker (a phone's appended data, a second image) is not read.
    """
    size, at = len(data), 2  # past the start-of-image marker
    while True:
        at = data.find(b"\xff", at)
        while 0 <= at < size - 1 and data[at + 1] == 0xFF:  # fill bytes before a marker
            at += 1
        if at < 0 or at >= size - 1:
            return False
        marker, at = data[at + 1], at + 2
        if marker == 0xD9:  # end of image
            return True
        if marker < 0xC0 or 0xD0 <= marker <= 0xD7:  # no length: restart, TEM, stuffing, reserved
            # (damaged scan data read as a marker: libjpeg decodes such files and says so)
            continue
        if at + 2 > size:
            return False
        at += (data[at] << 8) | data[at + 1]
        if at > size:
            return False
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next real marker
            while True:
                at = data.find(b"\xff", at)
                if at < 0 or at >= size - 1:
                    return False
                following = data[at + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    at += 2
                elif following == 0xFF:
                    at += 1
                else:
                    break


@contextlib.contextmanager
def _decoder_reports() -> Iterator[list[str]]:
    """Within: what the codecs (libpng, libjpeg, libtiff) write straight to file descriptor 2 is
    captured instead of reaching the user; on leaving, the list yielded holds it as one line
    (empty when they said nothing, or where fd 2 cannot be redirected). One decoder at a time:
    the descriptor is the process's."""
    report: list[str] = []
    # not re-entrant (a plain lock): no decoder runs inside another
    with _DECODE_LOCK, contextlib.ExitStack() as stack:
        capture = saved = None
        try:
            capture = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
            stack.callback(os.close, saved)
            os.dup2(capture.fileno(), 2)
        except OSError:  # no temporary file, no stderr to redirect: decoded as it is
            capture = None
        if capture is None:
            yield report
            return
        try:
            yield report
        finally:
            os.dup2(saved, 2)
            capture.seek(0)
            lines = capture.read(MAX_DECODER_REPORT_BYTES).decode("utf-8", errors="replace").splitlines()
            said = " ".join(" ".join(line.split()) for line in lines
                            if line.strip() and not _HARMLESS_DECODER_LINE.match(line.strip()))
            if said:
                report.append(said)


def _decode(path: Path) -> np.ndarray | None:
    """The file's pixels as stored (OpenCV ``IMREAD_UNCHANGED``), None where it cannot be decoded.

    The codecs write their complaints straight to file descriptor 2: those are captured while
    the file is decoded (:func:`_decoder_reports`). A file that cannot be decoded gets the
    caller's one-line error, naming it, instead; one that can is read, and what its decoder
    reported (a JPEG whose data is damaged in the middle, for one) becomes a warning naming the
    file.

    Raises:
        InputError: a file that cannot be read, or a JPEG cut short.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data.startswith(b"\xff\xd8\xff") and not _jpeg_is_complete(data):
        raise InputError(f"{path}: JPEG cut short (the file ends before its end-of-image marker)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    failure = None
    with _decoder_reports() as reported:
        try:
            if data[:4] in _TIFF_MAGIC:
                pixels = _decode_pages(buffer, path)
            else:
                pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            pixels, failure = None, exc
    if failure is not None:
        raise InputError(f"{path}: not a readable image ({exception_line(failure)})")
    if pixels is not None and reported:
        warnings.warn(f"{path}: the image decoder reported: {reported[0]}", stacklevel=3)
    return pixels


#: The most pages a TIFF read as one image may hold: the picture with its reduced-resolution
#: copies or thumbnails.
MAX_TIFF_PAGES = 8
#: The first four bytes of a TIFF (and of a BigTIFF), in either byte order.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _decode_pages(buffer: np.ndarray, path: Path) -> np.ndarray | None:
    """The image of a TIFF: its largest page, refusing a stack. A file holding several images of
    about one size (a multi-page TIFF of visits or of a series, which need not match to the pixel)
    does not say which one is the image, and reading the first alone would measure it silently.
    Pages at most half the largest's size on both sides (a thumbnail, a reduced-resolution copy),
    wherever they come, are left aside.

    Raises:
        InputError: another page more than half the largest page's size on either side, or more
            than :data:`MAX_TIFF_PAGES` pages.
    """
    # a longer file is a stack whatever its pages' sizes (eight pages hold a picture and its copies
    # halved seven times); decoding one page more than that bounds the memory a long stack takes
    ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED, None, (0, MAX_TIFF_PAGES + 1))
    if not ok or not pages:
        return None
    if len(pages) > MAX_TIFF_PAGES:
        raise InputError(f"{path}: a multi-page TIFF holding more than {MAX_TIFF_PAGES} images; "
                         "save each image as a file of its own")
    largest = max(pages, key=lambda page: page.shape[0] * page.shape[1])
    height, width = largest.shape[:2]
    full_size = [page for page in pages if 2 * page.shape[0] > height or 2 * page.shape[1] > width]
    if len(full_size) > 1:
        raise InputError(f"{path}: a multi-page TIFF holding {len(full_size)} images of about {width}x{height} px; "
                         "save each image as a file of its own")
    return largest


def _is_jpeg(path: Path) -> bool:
    """Whether the file is a JPEG (by its first bytes, whatever its name)."""
    with open(path, "rb") as handle:
        return handle.read(3) == b"\xff\xd8\xff"


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom(path: Path) -> Radiograph:
    ds, pixels = _dicom_pixels(path)
    bits = int(getattr(ds, "BitsStored", 16 if pixels.dtype.itemsize > 1 else 8))
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    full_scale = float((1 << bits) - 1)
    # signed pixels span -2^(bits-1) .. 2^(bits-1) - 1: the lowest is black, as 0 is for unsigned
    offset = float(1 << (bits - 1)) if signed else 0.0
    intensity = np.clip((pixels.astype(np.float64) + offset) / full_scale, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        intensity = 1.0 - intensity
    return Radiograph(intensity, bits, _dicom_pixel_spacing(ds, path), path)


def _dicom_pixels(path: Path) -> tuple[Any, np.ndarray]:
    """A DICOM file's data set and its stored pixel values (one greyscale frame).

    Raises:
        InputError: an unreadable or multi-frame file, or one compressed in a syntax this
            installation cannot decode.
    """
    import pydicom  # imported lazily: only DICOM input needs it

    try:
        # pydicom warns about every header it repairs while reading a corrupt file, quoting its
        # raw bytes; the user gets the one line below instead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # force: a file named as DICOM without the 128-byte preamble, which pydicom reads only
            # when told to (its error said "Use force=True", advice no command-line user can take)
            ds = pydicom.dcmread(str(path), force=True)
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is None and "PixelData" in ds:
                # a bare data set, without its file meta: the encoding the reader found is the syntax
                from pydicom.dataset import FileMetaDataset
                from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

                if not hasattr(ds, "file_meta"):
                    ds.file_meta = FileMetaDataset()
                syntax = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
                ds.file_meta.TransferSyntaxUID = syntax
            try:
                pixels = ds.pixel_array
            except Exception as exc:  # noqa: BLE001  (no decoder for a compressed syntax; else below)
                if syntax is None or not syntax.is_compressed or "missing" not in str(exc) \
                        or "dependenc" not in str(exc):
                    raise
                # pydicom names the decoders it lacks on the lines after the first, which a
                # one-line error dropped
                raise InputError(
                    f"{path}: DICOM compressed as {syntax.name}, which this installation cannot decode "
                    f"({exception_line(exc)}); decompress it first (for example gdcmconv --raw or "
                    "dcmdjpeg), or install a pydicom decoder for it (pylibjpeg with its plug-ins, or "
                    "python-gdcm)"
                ) from None
    except InputError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise InputError(f"{path}: unreadable DICOM ({exception_line(exc)})") from None
    if pixels.ndim != 2:
        raise InputError(f"{path}: expected a single-frame greyscale DICOM, got pixel array {pixels.shape}")
    return ds, pixels


#: Relative difference of a DICOM's row and column spacings beyond which its pixels are not square.
NON_SQUARE_PIXELS = 0.01


def _dicom_pixel_spacing(ds: Any, path: Path) -> float | None:
    """Row spacing (mm) from PixelSpacing, else ImagerPixelSpacing; None when neither is there.
    Pixels must be square (row and column spacings within :data:`NON_SQUARE_PIXELS`).

    PixelSpacing first: in a projection radiograph it is the spacing in the patient, calibrated
    or corrected for the geometric magnification where the modality did so (DICOM PS3.3
    10.7.1.3, with its PixelSpacingCalibrationType), while ImagerPixelSpacing is the detector's
    pitch, at which a joint above the detector appears a few per cent larger than it is.

    Only that it is a number is checked here: whether it is a plausible radiograph's is checked
    where it is used (:func:`jsnsynth.synth.layers.check_pixel_spacing`), so that a spacing
    given on the command line can still replace a wrong one.

    Raises:
        InputError: a spacing element that is not a number, or that states pixels that are not
            square, naming the file and the element.
    """
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = getattr(ds, tag, None)
                column = None
                if not isinstance(value, (str, bytes, int, float)) and value is not None:
                    # a multi-value element: rows first, then columns
                    value, column = (value[0] if len(value) else None), (value[1] if len(value) > 1 else None)
                if value is None or value in ("", b""):  # absent or empty: no spacing stated
                    continue
                spacing = float(value)
                column_spacing = float(column) if column not in (None, "", b"") else spacing
        except Exception:  # a malformed element: pydicom raises on access or float() on its text
            raise InputError(f"{path}: DICOM {tag} is not a number of mm") from None
        if not (math.isfinite(spacing) and math.isfinite(column_spacing)):
            raise InputError(f"{path}: DICOM {tag} is not a number of mm")
        if abs(column_spacing - spacing) > NON_SQUARE_PIXELS * abs(spacing):
            # the registration's turns and scales, and the JSN along a tilted axis, take pixels
            # as square: the row spacing alone gave millimetres that were wrong
            raise InputError(f"{path}: DICOM {tag} states pixels that are not square ({spacing:g} mm between rows, "
                             f"{column_spacing:g} mm between columns); resample the image to square pixels first")
        return spacing
    return None


def read_radiograph(path: str | os.PathLike) -> Radiograph:
    """Read a greyscale radiograph (PNG, JPEG, TIFF, BMP or DICOM, 8 or 16 bit).

    Colour images whose channels are equal are accepted as greyscale; real colour is rejected.

    Raises:
        InputError: missing, empty, unreadable, colour, float-valued or NaN-holding files.
    """
    path = _existing_file(path)
    if _is_dicom(path):
        return _read_dicom(path)
    pixels = _decode(path)
    if pixels is None:
        raise InputError(f"{path}: not a readable image (damaged, cut short, or not PNG, JPEG, TIFF, BMP or DICOM)")
    pixels = _to_greyscale(pixels, path)
    if pixels.dtype == np.uint8:
        bits = 8
    elif pixels.dtype == np.uint16:
        bits = 16
    elif np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)):
            raise InputError(f"{path}: image contains NaN or infinite values")
        if pixels.min() < 0 or pixels.max() > 1:
            raise InputError(f"{path}: floating-point images must hold intensities in [0, 1]")
        return Radiograph(pixels.astype(np.float64), 8 * pixels.dtype.itemsize, None, path)
    else:
        raise InputError(f"{path}: unsupported pixel type {pixels.dtype}")
    if pixels.size == 0:
        raise InputError(f"{path}: image has no pixels")
    intensity = pixels.astype(np.float64) / float((1 << bits) - 1)
    return Radiograph(intensity, bits, None, path)


#: Largest difference between the colour channels (share of full scale, 99.9th percentile) of an
#: image still read as grey.
GREY_TOLERANCE = 0.02


def _to_greyscale(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        colour = pixels[..., :3]
        if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2]):
            return np.ascontiguousarray(colour[..., 0])
        # grey saved through a colour pipeline (JPEG chroma, a viewer's tint) differs between
        # channels by a few levels: that is still a radiograph, read as the channels' mean
        wide = colour.astype(np.float64)
        spread = wide.max(axis=2) - wide.min(axis=2)
        full_scale = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
        if np.percentile(spread, 99.9) <= GREY_TOLERANCE * full_scale:
            return np.rint(wide.mean(axis=2)).astype(pixels.dtype) if full_scale > 1 else wide.mean(axis=2)
        raise InputError(f"{path}: expected a greyscale radiograph, got a colour image")
    raise InputError(f"{path}: expected a 2-D greyscale image, got array of shape {pixels.shape}")


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask image (any non-zero pixel is inside) as a bool array.

    Any non-zero pixel is inside, whatever the other values: a label image (0 outside, 1 and 2
    for two parts) is read as its union, as a user who drew it expects, not as its brightest
    label. A JPEG (lossy: its ringing leaves faint pixels around the mask and specks in it) is
    read as inside from half its largest value up. Save masks losslessly (PNG) all the same. An
    alpha channel that varies says where the mask is drawn (from half its largest value up): its
    transparent pixels are outside, and where the colour is one value throughout the drawn
    pixels, those are the mask.

    Args:
        path: PNG (or any format :func:`read_radiograph` reads: a DICOM by its stored values)
            holding the mask.
        shape: expected ``(H, W)``; a mismatch raises.

    Raises:
        InputError: missing or unreadable file, NaN values, wrong size, or an empty mask.
    """
    path = _existing_file(path)
    # a DICOM mask by its stored values: a signed one's offset or a MONOCHROME1 inversion, which
    # a radiograph's display intensity takes, would make its outside non-zero
    pixels = _dicom_pixels(path)[1] if _is_dicom(path) else _decode(path)
    if pixels is None:
        raise InputError(f"{path}: not a readable mask image (damaged, cut short, or not an image)")
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise InputError(f"{path}: mask contains NaN or infinite values")
    drawn = None  # where a mask's alpha channel says it is drawn, if it says anything
    if pixels.ndim == 3:
        alpha = pixels[..., -1]
        if pixels.shape[2] in (2, 4) and alpha.min() != alpha.max() and alpha.max() > 0:
            # a mask drawn in its alpha channel (an annotation tool's export: transparent outside,
            # its colour all black or all white) is its opaque pixels, from half the largest
            # alpha up (a soft brush's fringe is not); read by its colour alone, it was empty or
            # all inside
            drawn = alpha >= 0.5 * alpha.max()
        pixels = pixels[..., :-1].max(axis=2) if pixels.shape[2] in (2, 4) else pixels[..., :3].max(axis=2)
        if drawn is not None and pixels[drawn].min() == pixels[drawn].max():
            pixels = drawn.astype(np.uint8)  # the colour says nothing where it is drawn
    if drawn is None and looks_like_a_picture(pixels):
        # read as a mask, every non-zero pixel of a radiograph was inside: 'masks overlap by 100%'
        raise InputError(f"{path}: holds a picture, not a mask (most of its pixels are greys between its darkest "
                         "and brightest): give each bone's mask")
    if _is_jpeg(path):
        # a q95 JPEG of a 0/255 mask read as 'non-zero' grew the mask by 3-4 % with a dozen specks,
        # which moved a real pair's joint centre by 1.5 px and its JSN by 0.1 px
        mask = pixels >= 0.5 * float(pixels.max()) if pixels.max() > 0 else pixels != 0
    else:
        mask = pixels != 0
    if drawn is not None:
        mask &= drawn
    if shape is not None and mask.shape != tuple(shape):
        raise InputError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    if not mask.any():
        raise InputError(f"{path}: mask is empty")
    return mask


def encode_png(pixels: np.ndarray, compress: bool = True) -> bytes:
    """Encode a 2-D uint8 or uint16 array as PNG bytes, losslessly, keeping the bit depth.

    Args:
        pixels: the image.
        compress: False stores the (filtered) rows without deflate compression: still a valid,
            lossless PNG, ~5x faster to write and ~4x faster to read, ~30 % larger. For PNGs
            that go into a compressed container (the dataset's zstd parquet shards, which then
            end up smaller than with compressed PNGs inside).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise InputError(f"PNG encoding needs a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    # Tuned for speed (measured in benchmarks/bench_dataset.py, docs/dataset.md): the "up" filter
    # with zlib level 1 and the RLE strategy encodes a noisy 256x256 16-bit radiograph about twice
    # as fast as libpng's adaptive filters at level 3, within 2 % of its size (the low byte of a
    # 16-bit radiograph is noise-like, so no setting compresses it much), and 0/255 masks to a few
    # hundred bytes. The "up" filter also leaves stored rows that zstd compresses well.
    flags = [
        cv2.IMWRITE_PNG_COMPRESSION, 1 if compress else 0,
        cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
        cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
    ]
    ok, buffer = cv2.imencode(".png", pixels, flags)
    if not ok:
        raise OutputError("PNG encoding failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to a uint8 or uint16 array without changing the bit depth.

    Raises:
        InputError: bytes that are not a readable PNG, with what the decoder said of them (it
            wrote that to the terminal, past the caller's one-line error).
    """
    with _decoder_reports() as reported:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InputError(f"bytes are not a readable PNG image{f' ({reported[0]})' if reported else ''}")
    return pixels


def encode_float_tiff(values: np.ndarray) -> bytes:
    """Encode a 2-D float32 array (an attenuation layer) as lossless 32-bit float TIFF bytes."""
    values = np.asarray(values, dtype=np.float32)
    ok, buffer = cv2.imencode(".tiff", values)
    if not ok:
        raise OutputError("TIFF encoding failed")
    return buffer.tobytes()


def read_float_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a 32-bit float TIFF written by :func:`encode_float_tiff`."""
    path = _existing_file(path)
    values = _decode(path)
    if values is None or values.dtype != np.float32 or values.ndim != 2:
        raise InputError(f"{path}: not a single-channel 32-bit float TIFF")
    return values


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename, so it is never half there.

    A symbolic link is written through (its target is replaced, the link kept), and a path that
    is not a regular file (``/dev/null``, a FIFO, a terminal) is written to directly: renaming
    over those would replace them. The file gets the usual mode for new files (``0o666`` less the
    umask), not the temporary file's private one.

    Raises:
        OutputError: the path is a folder, or its folder cannot be made or written, naming it.
    """
    write_files_atomic({path: data})


def write_files_atomic(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Write several files so that none of them appears unless all could be written.

    Every regular file is first written under a temporary name beside it (as
    :func:`write_bytes_atomic` does for one), then the paths that are not regular files
    (``/dev/null``, a FIFO) are written directly, and only when all of that succeeded are the
    temporaries renamed into place, each rename atomic. A failure before the renames removes the
    temporaries and the folders this call made: no output of a command is left behind without
    the others (a figure without its JSON record). A rename that fails after others succeeded
    (the folders were checked writable a moment before) would leave those in place.

    Args:
        files: output path -> bytes, written in this order.

    Raises:
        OutputError: a path is a folder, or a folder cannot be made or written, naming it.
    """
    staged: list[tuple[str, Path]] = []  # (temporary, final path)
    direct: list[tuple[Path, bytes]] = []
    made: list[Path] = []  # folders this call created, outermost first
    try:
        for name, data in files.items():
            path = Path(os.path.realpath(name))
            if path.is_dir():
                raise OutputError(f"cannot write {path}: it is a folder")
            if path.exists() and not path.is_file():
                direct.append((path, data))
                continue
            try:
                made.extend(reversed([p for p in (path.parent, *path.parent.parents) if not p.exists()]))
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
                staged.append((tmp, path))
                _write_and_close(fd, data, path)
                os.chmod(tmp, 0o666 & ~_umask())
            except OSError as exc:
                raise OutputError(_cannot(f"cannot write {path}", exc, path.parent)) from None
        for path, data in direct:
            try:
                with open(path, "wb") as handle:
                    handle.write(data)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for folder in reversed(made):  # innermost first; only if nothing else was put there
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _write_and_close(fd: int, data: bytes, path: Path) -> None:
    """Write ``data`` to the open temporary ``fd`` of ``path`` and close it."""
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_outputs_apart(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, outputs that would overwrite an input or one another.

    Paths are compared after resolving links (and, for existing files, by device and inode, so a
    hard link counts as the same file). Paths that exist and are not regular files
    (``/dev/null``) may take several outputs.

    Raises:
        OutputError: naming the output and the input (or other output) it would replace.
    """
    seen_inputs = {}
    for path in inputs:
        seen_inputs.setdefault(_file_identity(path), Path(path))
    seen_outputs: dict[tuple, Path] = {}
    for path in outputs:
        key = _file_identity(path)
        if key in seen_inputs:
            raise OutputError(f"{path}: the output would overwrite the input {seen_inputs[key]}; choose another name")
        special = Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir()
        if key in seen_outputs and not special:
            raise OutputError(f"{path}: two outputs would be written to the same file ({seen_outputs[key]})")
        seen_outputs[key] = Path(path)


def _file_identity(path: str | os.PathLike) -> tuple:
    """What makes two paths the same file: device and inode when it exists, else its real path."""
    real = os.path.realpath(path)
    try:
        status = os.stat(real)
    except OSError:
        return ("path", real)
    return ("inode", status.st_dev, status.st_ino)


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON of ``value``: NaN and infinite floats (numpy's too) written as ``null``.

    Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON: ``jq``, JavaScript and
    most other readers refuse the whole document. Numpy scalars become plain numbers.

    Raises:
        ValueError: a value that JSON cannot hold (a bug, not an input problem).
    """
    return json.dumps(strict_json_value(value), indent=indent, allow_nan=False)


def strict_json_value(value: Any) -> Any:
    """``value`` as plain JSON data, recursively: every non-finite float None, numpy scalars
    Python numbers, tuples lists, keys strings (so a record compares equal after a round trip)."""
    if isinstance(value, dict):
        return {str(k): strict_json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def check_output_folder(path: str | os.PathLike) -> None:
    """Fail early, before any work and without creating anything, where
    :func:`make_output_folder` would fail at the end.

    Raises:
        OutputError: ``path`` is a file, an ancestor is a file, or a folder on the way is not
            writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    reason = _why_not_a_folder(path)
    if reason is not None:
        # a folder that is there already is not made, only written in
        raise OutputError(f"cannot write in the folder {path}: it is not writable" if path.is_dir() else
                          f"cannot make the folder {path}: {reason}")


@contextlib.contextmanager
def held_folder(path: str | os.PathLike, lock_name: str | None = None,
                output: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold the output folder ``path`` for one run: another run into it is refused until this
    one ends.

    Two runs started into one folder both reported success, the files being the last one's. The
    lock is the operating system's (``flock``), released when the process ends however it ends,
    so a killed run resumes. Without ``lock_name`` it is on the folder itself (``dataset``: no file
    to leave behind); with it, on that hidden file in the folder, made for the run and removed
    after it, so that runs writing other outputs into one folder (``validate`` and
    ``validate-real`` reports, ``quantify-batch`` tables of other names) go ahead side by side;
    ``output`` names what the run writes, for the message. Where there is no such lock (Windows,
    some network file systems) runs are not held apart.

    Raises:
        OutputError: another run holds ``path`` (or its ``lock_name``), or the lock file cannot
            be made.
    """
    target = Path(path) / lock_name if lock_name else Path(path)
    descriptor = _locked(target, bool(lock_name), output)
    try:
        yield
    finally:
        if descriptor is not None:
            if lock_name and _same_file(descriptor, target):  # still ours: removed while held
                with contextlib.suppress(OSError):
                    target.unlink()
            os.close(descriptor)  # releases the lock


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``descriptor`` (not removed, or made anew)."""
    try:
        held, named = os.fstat(descriptor), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _locked(target: Path, lock_file: bool, output: str | os.PathLike | None) -> int | None:
    """An open descriptor of ``target`` holding its exclusive lock, or None where locks cannot be
    taken (not POSIX, no such lock on this file system, a folder that cannot be opened for
    reading).

    A lock file is removed by the run that held it: a run that opened it just before then holds
    a file no longer there, so it opens the path again until the two are the same file (else two
    runs, one on the old file and one on a new one, would both go ahead).

    Raises:
        OutputError: another run holds it, or the lock file cannot be made.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    while True:
        try:
            descriptor = os.open(target, os.O_RDONLY | (os.O_CREAT if lock_file else 0), 0o644)
        except OSError as exc:
            if not lock_file:  # a folder that cannot be opened for reading: checked where it is written
                return None
            raise OutputError(f"{target.parent}: cannot make the run's lock file {target.name} ({exc.strerror})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            if output is not None:
                raise OutputError(f"{output}: another jsnsynth run is writing it; wait for it to end, or choose another "
                                  "output") from None
            folder = target.parent if lock_file else target
            raise OutputError(f"{folder}: another jsnsynth run is writing to this folder; wait for it to end, or "
                              "choose another folder") from None
        except OSError:  # no locks on this file system
            os.close(descriptor)
            return None
        if not lock_file or _same_file(descriptor, target):
            return descriptor
        os.close(descriptor)  # the file was removed (or made anew) between the open and the lock


def make_output_folder(path: str | os.PathLike) -> Path:
    """Create ``path`` (and its parents) as an output folder, or say why it cannot be one.

    Raises:
        OutputError: ``path`` is a file, an ancestor is a file, or a folder on the way is not
            writable.
    """
    path = Path(path)
    check_output_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(_cannot(f"cannot make the folder {path}", exc, path)) from None
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before any work, where :func:`write_bytes_atomic` would fail at the end.

    Raises:
        OutputError: ``path`` is a folder, or one of its ancestors is a file or unwritable.
    """
    path = Path(os.path.realpath(path))
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    reason = _why_not_a_folder(path.parent)
    if reason is not None:
        raise OutputError(f"cannot write {path}: {reason}")


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _why_not_a_folder(folder: Path) -> str | None:
    """Why ``folder`` cannot be made or written in: it or an ancestor is a file, or the deepest of
    them that exists is not writable; None when neither."""
    for candidate in (*reversed(folder.parents), folder):
        if candidate.exists() and not candidate.is_dir():
            return f"{candidate} is a file, not a folder"
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return None if os.access(existing, os.W_OK) else f"{existing} is not writable"


def _cannot(what: str, exc: OSError, folder: Path) -> str:
    """One-line message for a failed write or folder creation, with the folder that blocks it."""
    reason = _why_not_a_folder(folder)
    return f"{what}: {exc.strerror or exc}" + (f" ({reason})" if reason else "")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``path`` only when the block completes.

    If the block raises (or the process is interrupted), the partial folder is removed and
    ``path`` is untouched. An existing ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        with contextlib.suppress(OSError):  # a filesystem that fixes the modes (vfat, some network mounts)
            os.chmod(tmp, 0o777 & ~_umask())  # the usual mode for a new folder, not mkdtemp's private one
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_partial_outputs(folder: str | os.PathLike) -> None:
    """Delete ``*.part`` leftovers of an interrupted run inside ``folder`` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.glob(".*.part"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
