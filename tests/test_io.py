"""Reading radiographs and masks in every supported format; lossless 16-bit output; atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from jsnsynth.errors import InputError
from jsnsynth.synth import io


def _ramp16(shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    return (np.arange(shape[0] * shape[1], dtype=np.uint32).reshape(shape) * 977 % 65536).astype(np.uint16)


def test_png16_round_trip_is_lossless(tmp_path: Path) -> None:
    pixels = _ramp16()
    path = tmp_path / "image.png"
    io.write_bytes_atomic(path, io.encode_png(pixels))
    assert np.array_equal(io.decode_png(path.read_bytes()), pixels)
    radiograph = io.read_radiograph(path)
    assert radiograph.bit_depth == 16 and radiograph.pixel_spacing_mm is None
    np.testing.assert_array_equal(np.rint(radiograph.intensity * 65535).astype(np.uint16), pixels)


def test_reads_8bit_jpeg_and_16bit_tiff(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))
    cv2.imwrite(str(tmp_path / "a.jpg"), grey)
    jpeg = io.read_radiograph(tmp_path / "a.jpg")
    assert jpeg.bit_depth == 8 and jpeg.intensity.shape == grey.shape
    assert np.abs(jpeg.intensity * 255 - grey).max() < 8  # JPEG is lossy, but close
    pixels = _ramp16()
    cv2.imwrite(str(tmp_path / "b.tiff"), pixels)
    tiff = io.read_radiograph(tmp_path / "b.tiff")
    assert tiff.bit_depth == 16
    np.testing.assert_array_equal(np.rint(tiff.intensity * 65535), pixels)


def test_a_multi_page_tiff_is_refused_unless_its_other_pages_are_smaller(tmp_path: Path) -> None:
    # its first page alone used to be read, whatever the others held: two visits stacked in one
    # file measured the first twice without a word
    first, second = _ramp16(), _ramp16()[::-1].copy()
    ok, stack = cv2.imencodemulti(".tiff", [first, second])
    assert ok
    (tmp_path / "stack.tiff").write_bytes(stack.tobytes())
    # two visits need not match to the pixel
    ok, near = cv2.imencodemulti(".tiff", [first, np.ascontiguousarray(second[:-1])])
    assert ok
    (tmp_path / "near.tiff").write_bytes(near.tobytes())
    for name in ("stack.tiff", "near.tiff"):
        for read in (io.read_radiograph, io.read_mask):
            with pytest.raises(InputError, match="multi-page TIFF holding 2 images") as info:
                read(tmp_path / name)
            assert name in str(info.value) and "\n" not in str(info.value)
    # a thumbnail beside the picture, before or after it, leaves no doubt which page is the image
    thumbnail = np.ascontiguousarray(first[::4, ::4])
    for order, pages in (("after", [first, thumbnail]), ("before", [thumbnail, first])):
        ok, encoded = cv2.imencodemulti(".tiff", pages)
        assert ok
        (tmp_path / f"thumbnail_{order}.tiff").write_bytes(encoded.tobytes())
        read = io.read_radiograph(tmp_path / f"thumbnail_{order}.tiff")
        np.testing.assert_array_equal(np.rint(read.intensity * 65535), first)
    # a picture with its copies halved again and again (a pyramid) is one image; a long stack is
    # refused after decoding only one page more than a pyramid may hold
    halved = [first]
    while len(halved) < io.MAX_TIFF_PAGES:
        halved.append(np.ascontiguousarray(halved[-1][::2, ::2]) if min(halved[-1].shape) > 1 else halved[-1][:1, :1])
    ok, encoded = cv2.imencodemulti(".tiff", halved)
    assert ok
    (tmp_path / "pyramid.tiff").write_bytes(encoded.tobytes())
    np.testing.assert_array_equal(np.rint(io.read_radiograph(tmp_path / "pyramid.tiff").intensity * 65535), first)
    ok, encoded = cv2.imencodemulti(".tiff", [first] + [thumbnail] * io.MAX_TIFF_PAGES)
    assert ok
    (tmp_path / "long.tiff").write_bytes(encoded.tobytes())
    with pytest.raises(InputError, match=f"more than {io.MAX_TIFF_PAGES} images") as info:
        io.read_radiograph(tmp_path / "long.tiff")
    assert "long.tiff" in str(info.value)


def test_greyscale_stored_as_rgb_is_accepted_colour_is_not(tmp_path: Path) -> None:
    grey = np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([grey] * 3))
    assert io.read_radiograph(tmp_path / "rgb.png").intensity.shape == (20, 20)
    colour = np.dstack([grey, grey // 2, grey])
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(InputError, match="colour"):
        io.read_radiograph(tmp_path / "colour.png")
    # grey through a colour pipeline (JPEG chroma, a tint): channels a few levels apart
    level = np.full((20, 20), 120, np.uint8)
    tinted = np.dstack([level, level + 2, level - 1])
    cv2.imwrite(str(tmp_path / "tinted.png"), tinted)
    np.testing.assert_allclose(io.read_radiograph(tmp_path / "tinted.png").intensity, 120 / 255, atol=1 / 255)


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, spacing_tag: str | None, signed: bool = False) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1 if signed else 0
    if spacing_tag:
        setattr(ds, spacing_tag, [0.1, 0.1])
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


@pytest.mark.parametrize(
    ("photometric", "spacing_tag", "spacing"),
    [("MONOCHROME2", "ImagerPixelSpacing", 0.1), ("MONOCHROME1", "PixelSpacing", 0.1), ("MONOCHROME2", None, None)],
)
def test_dicom_spacing_and_photometric_interpretation(tmp_path: Path, photometric, spacing_tag, spacing) -> None:
    pixels = (np.arange(24 * 32).reshape(24, 32) * 5 % 4096).astype(np.uint16)
    path = tmp_path / "x.dcm"
    _write_dicom(path, pixels, photometric, spacing_tag)
    radiograph = io.read_radiograph(path)
    expected = pixels / 4095.0
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(radiograph.intensity, expected, atol=1e-12)
    assert radiograph.bit_depth == 12 and radiograph.pixel_spacing_mm == spacing


def test_dicom_calibrated_pixel_spacing_wins_over_the_detector_pitch(tmp_path: Path) -> None:
    """A radiograph whose PixelSpacing was calibrated in the patient's plane (0.09 mm) beside the
    detector's ImagerPixelSpacing (0.1 mm): lengths in the patient need the first; the detector's
    pitch made every millimetre 11 % long."""
    pixels = (np.arange(24 * 32).reshape(24, 32) * 5 % 4096).astype(np.uint16)
    _write_dicom(tmp_path / "c.dcm", pixels, "MONOCHROME2", "ImagerPixelSpacing")
    import pydicom

    ds = pydicom.dcmread(str(tmp_path / "c.dcm"))
    ds.PixelSpacing = [0.09, 0.09]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.save_as(str(tmp_path / "c.dcm"))
    assert io.read_radiograph(tmp_path / "c.dcm").pixel_spacing_mm == pytest.approx(0.09)


def test_signed_dicom_pixels_keep_their_order(tmp_path: Path) -> None:
    """Signed pixels (PixelRepresentation 1) were clipped at 0: every negative one read as black."""
    pixels = (np.arange(24 * 32).reshape(24, 32) * 5 % 4096 - 2048).astype(np.int16)
    _write_dicom(tmp_path / "s.dcm", pixels, "MONOCHROME2", None, signed=True)
    np.testing.assert_allclose(io.read_radiograph(tmp_path / "s.dcm").intensity, (pixels + 2048.0) / 4095.0, atol=1e-12)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"", "empty"), (b"this is not an image at all", "not a readable image")],
)
def test_bad_radiograph_files_are_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        io.read_radiograph(path)
    assert "bad.png" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tiff"])
def test_image_cut_short_is_rejected_in_one_line(tmp_path: Path, capfd, suffix: str) -> None:
    # libjpeg decodes a JPEG cut short, fills the rows it lacks with grey and only warns on
    # stderr: such a file used to be measured as if it were whole. The codecs' own lines stay
    # off stderr, which is the process's again afterwards.
    pixels = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), (0, 0), 2)
    ok, encoded = cv2.imencode(suffix, pixels)
    assert ok
    whole = tmp_path / f"whole{suffix}"
    whole.write_bytes(encoded.tobytes())
    assert np.array_equal(io.read_radiograph(whole).intensity, cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) / 255.0)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(encoded.tobytes()[: int(0.8 * encoded.size)])
    capfd.readouterr()
    for read in (io.read_radiograph, io.read_mask):
        with pytest.raises(InputError) as info:
            read(cut)
        assert f"cut{suffix}" in str(info.value) and "\n" not in str(info.value)
    os.write(2, b"still there\n")
    assert capfd.readouterr().err == "still there\n"


def test_reading_in_threads_leaves_stderr_in_place(tmp_path: Path, capfd) -> None:
    # stderr is the process's: while a file is decoded it points to a capture file, and threads
    # that saved and restored it in turn left it on the capture for good (one decode at a time)
    from concurrent.futures import ThreadPoolExecutor

    ok, encoded = cv2.imencode(".png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    whole.write_bytes(encoded.tobytes())
    cut.write_bytes(encoded.tobytes()[: encoded.size // 2])

    def read(k: int) -> bool:
        try:
            io.read_radiograph(whole if k % 2 else cut)
            return True
        except InputError:
            return False

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(read, range(200))) == 100
    capfd.readouterr()
    os.write(2, b"still there\n")
    assert capfd.readouterr().err == "still there\n"


def test_jpeg_with_data_after_its_end_is_whole(tmp_path: Path) -> None:
    # phones append data after a JPEG's end-of-image marker; only a file that ends before that
    # marker is cut short, whatever bytes follow it (a scan marker among them)
    rng = np.random.default_rng(1)
    pixels = cv2.GaussianBlur(rng.integers(0, 256, (48, 40), dtype=np.uint8), (0, 0), 2)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 2])
    assert ok
    path = tmp_path / "trailer.jpg"
    path.write_bytes(encoded.tobytes() + b"\xff\xda" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert np.array_equal(io.read_radiograph(path).intensity, cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) / 255.0)
    scans = [i for i in range(encoded.size - 1) if encoded[i] == 0xFF and encoded[i + 1] == 0xDA]
    assert len(scans) > 1  # progressive: cut between two scans, the file decodes, incomplete
    path.write_bytes(encoded.tobytes()[: scans[-1]])
    with pytest.raises(InputError, match="cut short"):
        io.read_radiograph(path)


@pytest.mark.parametrize("damage", ["bytes", "marker"])
def test_damaged_jpeg_is_read_with_a_warning_naming_it(tmp_path: Path, damage: str) -> None:
    # damage inside the image data still decodes; what libjpeg says about it, which used to be
    # a stray line on stderr, becomes a warning that names the file (damage that reads as a
    # reserved marker is not a file cut short)
    pixels = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), (0, 0), 2)
    ok, encoded = cv2.imencode(".jpg", pixels)
    data = bytearray(encoded.tobytes())
    middle = len(data) // 2
    if damage == "bytes":
        data[middle:middle + 40] = np.random.default_rng(0).integers(0, 255, 40, dtype=np.uint8).tobytes()
    else:
        data[middle:middle + 2] = b"\xff\x97"
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged.jpg: the image decoder reported: Corrupt JPEG data"):
        assert io.read_radiograph(path).intensity.shape == (64, 64)


def test_atomic_directory_has_the_usual_mode(tmp_path: Path) -> None:
    # mkdtemp makes a private folder (0700); renamed into place it kept that mode
    mask = os.umask(0o022)
    try:
        with io.atomic_directory(tmp_path / "made") as folder:
            (folder / "a.txt").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o755


def test_nan_float_tiff_is_rejected(tmp_path: Path) -> None:
    values = np.zeros((8, 8), np.float32)
    values[2, 3] = np.nan
    io.write_bytes_atomic(tmp_path / "nan.tiff", io.encode_float_tiff(values))
    with pytest.raises(InputError, match="NaN"):
        io.read_radiograph(tmp_path / "nan.tiff")


def test_float_tiffs_report_their_own_bit_depth(tmp_path: Path) -> None:
    # a float64 TIFF was reported as 32 bits in quantify's JSON
    for dtype, bits in ((np.float32, 32), (np.float64, 64)):
        cv2.imwrite(str(tmp_path / f"{bits}.tiff"), np.full((8, 8), 0.25, dtype))
        radiograph = io.read_radiograph(tmp_path / f"{bits}.tiff")
        assert radiograph.bit_depth == bits and np.all(radiograph.intensity == 0.25)


def test_float_tiff_round_trip_is_exact(tmp_path: Path) -> None:
    values = np.random.default_rng(2).uniform(0, 4, (17, 23)).astype(np.float32)
    io.write_bytes_atomic(tmp_path / "layer.tiff", io.encode_float_tiff(values))
    assert np.array_equal(io.read_float_tiff(tmp_path / "layer.tiff"), values)


def test_mask_reading_checks_size_and_emptiness(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert io.read_mask(tmp_path / "m.png", (10, 12)).sum() == 12
    with pytest.raises(InputError, match="mask is 12x10, image is 20x20"):
        io.read_mask(tmp_path / "m.png", (20, 20))
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((10, 12), np.uint8))
    with pytest.raises(InputError, match="mask is empty"):
        io.read_mask(tmp_path / "empty.png")


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sample"
    with pytest.raises(RuntimeError):
        with io.atomic_directory(target) as work:
            (work / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with io.atomic_directory(target) as work:
        (work / "done.txt").write_text("done")
    assert (target / "done.txt").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["sample"]


def test_atomic_write_keeps_links_devices_and_the_usual_mode(tmp_path) -> None:
    from jsnsynth.errors import OutputError
    from jsnsynth.synth.io import write_bytes_atomic

    target = tmp_path / "real.json"
    target.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_bytes_atomic(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"  # written through, link kept
    write_bytes_atomic(os.devnull, b"discarded")  # a device is written to, never replaced
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()
    old_mask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "fresh.json", b"{}")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "fresh.json").stat().st_mode & 0o777 == 0o644
    with pytest.raises(OutputError, match="it is a folder"):
        write_bytes_atomic(tmp_path, b"x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_bytes_atomic(target / "below.json", b"x")
    assert not list(tmp_path.glob(".*.part"))


def test_dicom_spacing_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    """A malformed spacing element was once 'ValueError: could not convert string to float'."""
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    path = tmp_path / "x.dcm"
    _write_dicom(path, np.zeros((24, 32), np.uint16), "MONOCHROME2", None)
    ds = pydicom.dcmread(str(path))
    tag = Tag(0x0018, 0x1164)  # ImagerPixelSpacing, stored as the text "abc"
    ds[tag] = RawDataElement(tag, "DS", 4, b"abc ", 0, False, True)
    ds.save_as(str(path), enforce_file_format=True)
    with pytest.raises(InputError, match=r"x\.dcm: DICOM ImagerPixelSpacing is not a number"):
        io.read_radiograph(path)


@pytest.mark.parametrize("columns_mm, square", [(0.2, False), (0.1005, True)])
def test_dicom_pixels_that_are_not_square_are_refused(tmp_path: Path, columns_mm: float, square: bool) -> None:
    """Spacings of 0.1 mm between rows and 0.2 between columns were read as 0.1 mm square pixels."""
    import pydicom

    path = tmp_path / "x.dcm"
    _write_dicom(path, np.zeros((24, 32), np.uint16), "MONOCHROME2", "PixelSpacing")
    ds = pydicom.dcmread(str(path))
    ds.PixelSpacing = [0.1, columns_mm]
    ds.save_as(str(path), enforce_file_format=True)
    if square:  # within 1 %: a header's rounding
        assert io.read_radiograph(path).pixel_spacing_mm == 0.1
        return
    with pytest.raises(InputError, match=r"x\.dcm: DICOM PixelSpacing states pixels that are not square \(0\.1 mm "
                                         r"between rows, 0\.2 mm between columns\)"):
        io.read_radiograph(path)


def test_dicom_without_its_preamble_is_read(tmp_path: Path) -> None:
    """A DICOM file without the 128-byte preamble (a bare data set, as some exports write it)
    was refused with pydicom's 'Use force=True', advice no command-line user can take."""
    pixels = (np.arange(24 * 32).reshape(24, 32) * 5 % 4096).astype(np.uint16)
    _write_dicom(tmp_path / "x.dcm", pixels, "MONOCHROME2", "PixelSpacing")
    import pydicom

    ds = pydicom.dcmread(str(tmp_path / "x.dcm"))
    ds.preamble = None  # written without preamble nor "DICM"
    ds.save_as(str(tmp_path / "bare.dcm"), enforce_file_format=False)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    radiograph = io.read_radiograph(tmp_path / "bare.dcm")
    np.testing.assert_allclose(radiograph.intensity, pixels / 4095.0, atol=1e-12)
    assert radiograph.pixel_spacing_mm == 0.1
    # nor its file meta (no transfer syntax stated): read in the encoding found, either one
    del ds.file_meta
    for implicit in (True, False):
        ds.save_as(str(tmp_path / "data_set.dcm"), implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        radiograph = io.read_radiograph(tmp_path / "data_set.dcm")
        np.testing.assert_allclose(radiograph.intensity, pixels / 4095.0, atol=1e-12)


def test_dicom_compressed_beyond_the_installed_decoders_says_how_to_read_it(tmp_path: Path, monkeypatch) -> None:
    """A JPEG Lossless DICOM (the usual CR/DX syntax) without a decoder for it: pydicom names the
    decoders it lacks on the lines after the first, which the one-line error dropped."""
    import pydicom

    def no_decoder(self):
        raise RuntimeError("Unable to decompress 'JPEG Lossless' pixel data because all plugins are missing "
                           "dependencies:\n    gdcm - requires gdcm\n    pylibjpeg - requires pylibjpeg")

    _write_dicom(tmp_path / "x.dcm", np.zeros((24, 32), np.uint16), "MONOCHROME2", None)
    ds = pydicom.dcmread(str(tmp_path / "x.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3 not decoded here"])
    ds.save_as(str(tmp_path / "jpeg_lossless.dcm"), enforce_file_format=True)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(InputError, match=r"jpeg_lossless\.dcm: DICOM compressed as JPEG Lossless.*cannot decode") as info:
        io.read_radiograph(tmp_path / "jpeg_lossless.dcm")
    assert "decompress it first" in str(info.value) and "pylibjpeg" in str(info.value)


def test_corrupt_dicom_is_one_printable_line_without_warnings(tmp_path: Path) -> None:
    import warnings

    path = tmp_path / "corrupt.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="corrupt.dcm: unreadable DICOM") as info:
            io.read_radiograph(path)
    assert not caught  # pydicom's notes on the header it repaired once reached the user as warnings
    message = str(info.value)
    assert message.isprintable() and len(message) < 400  # its raw bytes were quoted in the message


def test_any_non_zero_mask_pixel_is_inside(tmp_path: Path) -> None:
    """A label mask (0 outside, 1 and 2 for two parts) was read as its brightest label only."""
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 3:7] = 1
    labels[5:8, 3:7] = 2
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    assert io.read_mask(tmp_path / "labels.png").sum() == 24
    nan_mask = np.ones((10, 12), np.float32)
    nan_mask[0, 0] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tiff"), nan_mask)
    with pytest.raises(InputError, match="NaN"):
        io.read_mask(tmp_path / "nan.tiff")


@pytest.mark.parametrize("colour", [0, 255, "varies"])
def test_a_mask_drawn_in_its_alpha_channel_is_its_opaque_pixels(tmp_path: Path, colour) -> None:
    """An annotation tool's export: transparent outside the mask, drawn in black or white (read by
    its colour alone: 'mask is empty', or all inside, 'masks overlap by 100 %'), or in a colour
    over an opaque black background with transparent padding (both say where: the colour in the
    opaque part). A mask whose alpha is constant reads as before, by its colour."""
    mask = np.zeros((10, 12), bool)
    mask[2:7, 3:9] = True
    rgba = np.zeros((10, 12, 4), np.uint8)
    if colour == "varies":
        rgba[..., 3] = 255
        rgba[:, :2, 3] = 0  # transparent padding
        rgba[mask, 2] = 200
    else:
        rgba[..., :3] = colour
        rgba[mask, 3] = 255
    cv2.imwrite(str(tmp_path / "m.png"), rgba)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png", (10, 12)), mask)
    if colour == 0:  # a soft brush's fringe, under half the full alpha, is outside
        fringe = rgba.copy()
        fringe[1, 3:9, 3] = fringe[7, 3:9, 3] = 100
        cv2.imwrite(str(tmp_path / "fringe.png"), fringe)
        np.testing.assert_array_equal(io.read_mask(tmp_path / "fringe.png", (10, 12)), mask)
    rgba[..., 3] = 255
    rgba[..., :3] = 0
    rgba[mask, 1] = 255
    cv2.imwrite(str(tmp_path / "rgb.png"), rgba)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "rgb.png", (10, 12)), mask)


def test_a_jpeg_mask_is_read_without_its_ringing(tmp_path: Path) -> None:
    """A mask saved as JPEG was read 'any non-zero pixel': 3-4 % larger, with specks."""
    yy, xx = np.mgrid[:128, :128]
    mask = ((xx - 64) / 40.0) ** 2 + ((yy - 50) / 25.0) ** 2 < 1.0
    cv2.imwrite(str(tmp_path / "mask.jpg"), np.where(mask, 255, 0).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert (cv2.imread(str(tmp_path / "mask.jpg"), cv2.IMREAD_GRAYSCALE) != 0).sum() > mask.sum() + 20  # ringing
    read = io.read_mask(tmp_path / "mask.jpg")
    assert np.count_nonzero(read != mask) <= 4  # at most a few edge pixels of the outline


def test_a_picture_given_as_a_mask_is_named_so(tmp_path: Path) -> None:
    """A radiograph given as a mask was read with every non-zero pixel inside, and the error
    that followed spoke of a label image given as both masks."""
    yy, xx = np.mgrid[:128, :128]
    picture = (20000 + 30000 * np.exp(-((xx - 64) ** 2 + (yy - 60) ** 2) / 900.0) + 40 * xx).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "radiograph.png"), picture)
    with pytest.raises(InputError, match=r"radiograph.png: holds a picture, not a mask \(most of its pixels are greys"):
        io.read_mask(tmp_path / "radiograph.png")
    # masks blurred, stored as JPEG at a low quality, or labelled 0/1/2 are still masks
    mask = ((xx - 64) / 40.0) ** 2 + ((yy - 50) / 25.0) ** 2 < 1.0
    blurred = cv2.GaussianBlur(mask.astype(np.float32) * 255, (0, 0), 6).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "blurred.png"), blurred)
    cv2.imwrite(str(tmp_path / "mask.jpg"), np.where(mask, 255, 0).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 30])
    labels = np.where(mask, np.where(yy < 50, 1, 2), 0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    for name in ("blurred.png", "mask.jpg", "labels.png"):
        assert io.read_mask(tmp_path / name).any()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_several_files_are_written_all_or_none(tmp_path: Path) -> None:
    from jsnsynth.errors import OutputError

    with pytest.raises(OutputError, match="/dev/full"):
        io.write_files_atomic({tmp_path / "figure.png": b"png", tmp_path / "b.csv": b"csv", "/dev/full": b"{}"})
    assert list(tmp_path.iterdir()) == []  # neither the files nor their temporaries
    (tmp_path / "panel.png").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        io.write_files_atomic({tmp_path / "a.tif": b"a", tmp_path / "panel.png": b"p"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panel.png"]
    # the folders a failed call made go too
    with pytest.raises(OutputError, match="it is a folder"):
        io.write_files_atomic({tmp_path / "new" / "deep" / "a.tif": b"a", tmp_path / "panel.png": b"p"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panel.png"]
    io.write_files_atomic({tmp_path / "a.tif": b"a", tmp_path / "sub" / "b.png": b"b"})
    assert (tmp_path / "a.tif").read_bytes() == b"a" and (tmp_path / "sub" / "b.png").read_bytes() == b"b"


def test_outputs_may_not_overwrite_inputs_or_each_other(tmp_path: Path) -> None:
    from jsnsynth.errors import OutputError

    image = tmp_path / "base.png"
    image.write_bytes(b"x")
    (tmp_path / "hard.png").hardlink_to(image)
    with pytest.raises(OutputError, match="would overwrite the input"):
        io.check_outputs_apart([tmp_path / "out.json", tmp_path / "." / "base.png"], [image])
    with pytest.raises(OutputError, match="would overwrite the input"):
        io.check_outputs_apart([tmp_path / "hard.png"], [image])
    with pytest.raises(OutputError, match="same file"):
        io.check_outputs_apart([tmp_path / "r.png", tmp_path / "r.png"], [image])
    io.check_outputs_apart([os.devnull, os.devnull, tmp_path / "new.png"], [image])  # a device takes several


def test_json_output_is_strict() -> None:
    import json

    text = io.json_text({"rmse": float("inf"), "ci": [np.float64("nan"), 1.5], "n": np.int64(3), "ok": np.bool_(True),
                         "xy": np.array([1.0, np.inf])})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON token {name}")) == {
        "rmse": None, "ci": [None, 1.5], "n": 3, "ok": True, "xy": [1.0, None]}


@pytest.mark.parametrize("signed", [False, True])
def test_a_dicom_mask_is_read_by_its_stored_values(tmp_path: Path, signed: bool) -> None:
    # images may be DICOM, and masks were refused as 'not a readable mask image'; read as a
    # radiograph's display intensity, a signed mask's outside (0, offset to mid-grey) would be inside
    mask = np.zeros((24, 32), np.uint16)
    mask[5:12, 8:20] = 1
    path = tmp_path / "upper.dcm"
    _write_dicom(path, mask, "MONOCHROME2", None, signed=signed)
    np.testing.assert_array_equal(io.read_mask(path, (24, 32)), mask != 0)
    _write_dicom(path, np.zeros((24, 32), np.uint16), "MONOCHROME2", None, signed=signed)
    with pytest.raises(InputError, match="mask is empty"):
        io.read_mask(path)


def test_png_bytes_that_do_not_decode_say_why_in_the_error_alone(capfd) -> None:
    """A damaged PNG inside a dataset shard: libpng wrote 'libpng error: bad adaptive filter
    value' straight to the terminal, above the one-line error (an outside probe)."""
    data = bytearray(io.encode_png((np.arange(64 * 64).reshape(64, 64) * 977 % 65536).astype(np.uint16)))
    for at in range(200, 1200):
        data[at] ^= 0x5A
    with pytest.raises(InputError, match=r"^bytes are not a readable PNG image \(libpng error: .+\)$"):
        io.decode_png(bytes(data))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="locks are POSIX flock")
def test_a_lock_file_its_run_removed_holds_no_other_run(tmp_path: Path) -> None:
    # a run that opened the lock file just before its holder removed it took the lock of a file
    # no longer there: it and a run that made the file anew both went ahead, and its end removed
    # the new run's file, letting a third in
    import fcntl

    from jsnsynth.errors import OutputError

    first = io.held_folder(tmp_path, ".run.lock")
    first.__enter__()
    stale = os.open(tmp_path / ".run.lock", os.O_RDONLY)
    first.__exit__(None, None, None)
    assert not (tmp_path / ".run.lock").exists()  # no lock file left after a run
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock of a file no longer there
    assert not io._same_file(stale, tmp_path / ".run.lock")  # which the run sees, and opens again
    with io.held_folder(tmp_path, ".run.lock", output=tmp_path / "table.csv"):
        current = os.open(tmp_path / ".run.lock", os.O_RDONLY)
        assert io._same_file(current, tmp_path / ".run.lock")
        os.close(current)
        with pytest.raises(OutputError, match="table.csv: another jsnsynth run is writing it"):
            with io.held_folder(tmp_path, ".run.lock", output=tmp_path / "table.csv"):
                pass
    os.close(stale)
    with pytest.raises(OutputError, match=r"cannot make the run's lock file .* \(File name too long\)"):
        with io.held_folder(tmp_path, "." + "q" * 300 + ".lock"):
            pass
