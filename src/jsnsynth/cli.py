"""The ``jsnsynth`` command line: thin wiring of synth, lsn and quantify.

Every command parses its options, calls one library function and prints where its outputs went.
Errors caused by input are reported as a single ``jsnsynth: error: ...`` line with exit code 1;
usage errors are such a line too and exit with 2 (click's convention); an interrupt exits with
130 and leaves only complete files behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from jsnsynth import __version__
from jsnsynth.errors import InputError, JsnSynthError, exception_line, one_line
from jsnsynth.synth.limits import (
    DEFAULT_MAX_MASK_OVERLAP_PX,
    MAX_HEEL_GAIN,
    MAX_JOINT_SPACE_MM,
    MAX_MOTION_BLUR_PX2,
    MAX_SIDE_PX,
    PAIR_OPTION_LIMITS,
)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class FiniteFloatRange(click.FloatRange):
    """A float option's range that refuses NaN and infinities, as usage errors like any value out
    of range (NaN passes every comparison with the bounds; it was left to the library, exit 1)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number

    def _describe_range(self) -> str:
        # without bounds there is no range for --help to state (click would print 'x<=None')
        return "" if self.min is None and self.max is None else super()._describe_range()


class NonEmptyPath(click.Path):
    """A path option or argument that refuses an empty string as a usage error: ``Path("")`` is
    the current folder, so ``--out "$UNSET"`` wrote a command's files there."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path (an unset shell variable?)", param, ctx)
        return super().convert(value, param, ctx)


# The ranges the options state in --help are the library's checks, repeated here because the
# command line imports no numerics at start-up (tests/test_cli.py holds them equal):
#: jsnsynth.synth.phantom.MIN_SIZE_PX
PHANTOM_SIZE_PX = click.IntRange(64, MAX_SIDE_PX)
#: jsnsynth.synth.layers.PIXEL_SPACING_RANGE_MM
PIXEL_SPACING = FiniteFloatRange(0.02, 1.0)


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past click, which would print a blank line first."""


class _Group(click.Group):
    """The command group: a Ctrl-C in any command reaches :func:`main` as :class:`_Interrupted`."""

    def invoke(self, ctx: click.Context):  # noqa: D102  (click's)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="jsnsynth")
def cli() -> None:
    """Finger-joint radiographs with exactly known joint space narrowing (JSN).

    \b
    Typical flow:
      jsnsynth phantom --n 8 --out phantoms/           physics phantoms with exact layers
      jsnsynth dataset --source phantom --pairs 100 --out ds/   labelled baseline/follow-up pairs
      jsnsynth quantify base.png follow.png --upper-mask u.png --lower-mask l.png
      jsnsynth quantify-batch pairs.csv --out results.csv   a study's visit pairs, one row each
      jsnsynth validate ds/                            accuracy of a JSN method against truth

    Sign convention: JSN progression = dy_upper - dy_lower, the two bones' displacements along
    the joint axis (upper -> lower bone) at the joint centre, their shared repositioning taken
    out; positive means narrowing.
    """


# --- synth commands -------------------------------------------------------------------------


@cli.command("phantom")
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of phantoms to write.")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(path_type=Path),
              help="Output folder (new, empty, or an interrupted run of the same command to resume).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Base seed; phantom i uses SeedSequence([seed, i]).")
@click.option("--size", "size_px", type=PHANTOM_SIZE_PX, default=256, show_default=True,
              help="Crop size in pixels.")
@click.option("--pixel-spacing", "pixel_spacing_mm", type=PIXEL_SPACING, default=0.175, show_default=True,
              help="Pixel size in mm.")
@click.option("--joint-type", type=click.Choice(["mcp", "pip", "dip", "random"]), default="random",
              show_default=True, help="Joint proportions.")
@click.option("--noise/--no-noise", default=True, show_default=True, help="Quantum and electronic noise in radiograph.png.")
def phantom_command(n: int, out_dir: Path, seed: int, size_px: int, pixel_spacing_mm: float, joint_type: str,
                    noise: bool) -> None:
    """Write physics phantoms: radiograph, exact attenuation layers, masks and a JSON record each.

    Each sample goes to OUT/phantom_NNNNN/ (format: docs/phantom.md). Rerunning the same command
    resumes an interrupted run.
    """
    from jsnsynth.synth.phantom_io import write_phantom_samples

    folder, written, skipped = write_phantom_samples(out_dir, n, seed=seed, size_px=size_px,
                                                     pixel_spacing_mm=pixel_spacing_mm, joint_type=joint_type,
                                                     noise=noise)
    resumed = f" ({skipped} already there)" if skipped else ""
    click.echo(f"wrote {written} phantom(s) to {folder}{resumed}")


def _file_to_write(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """An option's file to write, as a path; a name that ends in a separator names a folder (a
    ``Path`` would drop the separator and write a file of the folder's name)."""
    if value is None:
        return None
    if value.endswith(("/", os.sep)):
        raise click.BadParameter(f"'{value}' names a folder; give a file name, such as '{value}result.json'", ctx, param)
    return Path(value)


def _fractions(ctx: click.Context, param: click.Parameter, value):
    """Fractions that do not sum to 1 are a usage error naming the option (exit 2): the library's
    check named its own field and exited 1."""
    if value is not None and not math.isclose(sum(value), 1.0, abs_tol=1e-9):
        raise click.BadParameter(f"{' '.join(f'{v:g}' for v in value)} sum to {sum(value):g}, not 1", ctx, param)
    return value


def _low_high(ctx: click.Context, param: click.Parameter, value):
    """A ``LOW HIGH`` range the wrong way round is a usage error naming the option (exit 2), as a
    value out of range is: the library's check named its own field and exited 1."""
    if value is not None and value[0] > value[1]:
        raise click.BadParameter(f"LOW {value[0]:g} is above HIGH {value[1]:g}: give the range as LOW HIGH", ctx, param)
    return value


def _method_spelling(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A ``--method`` that is a builtin name or spelt ``module:function``: anything else is a
    usage error (whether the module imports is the input's matter, checked when it runs)."""
    from jsnsynth.quantify.validate import check_method_spelling

    try:
        check_method_spelling(value)
    except JsnSynthError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def _repo_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A Hub repository id spelt ``OWNER/NAME``, else a usage error."""
    from jsnsynth.synth.publish import REPO_ID_PATTERN

    if not REPO_ID_PATTERN.match(value):
        raise click.BadParameter(f"'{value}' is not OWNER/NAME", ctx, param)
    return value


def _pair_limit(name: str) -> FiniteFloatRange:
    """The range the library allows a pair option (:data:`PAIR_OPTION_LIMITS`), as the option's
    type: out of it is a usage error (exit 2), as for every other option's range."""
    return FiniteFloatRange(*PAIR_OPTION_LIMITS[name])


def _dataset_source(spec: str, n_pairs: int, size_px: int | None, max_mask_overlap_px: int | None,
                    pixel_spacing_mm: float | None = None):
    """``phantom`` / ``fingerjoints:DIR`` from synth; ``lsn:DIR`` from the LSN (lazy import).

    ``max_mask_overlap_px`` and ``pixel_spacing_mm`` are None when the option was not given (the
    source's default applies: the phantom's and the nominal 0.175 mm/px, a DICOM crop's header
    for ``lsn``).

    Raises:
        JsnSynthError: an unusable source.
        click.UsageError: an unknown source, one without its folder, or an option for another
            source (exit 2): ``--size`` for a source of real
            crops (their size is the images'), ``--max-mask-overlap`` for one without drawn masks
            (ignoring the option would hide a mistake).
    """
    from jsnsynth.synth.sources import open_source, split_source_spec

    try:
        kind, folder = split_source_spec(spec)
    except JsnSynthError as exc:  # a misspelt source is a usage error, as a misspelt choice of any other option is
        raise click.UsageError(str(exc)) from None
    if size_px is not None and spec != "phantom":
        raise click.UsageError(f"--size applies to --source phantom only; the crops of '{spec}' keep their own size")
    if max_mask_overlap_px is not None and not spec.startswith("fingerjoints:"):
        raise click.UsageError(f"--max-mask-overlap applies to --source fingerjoints:DIR only; '{spec}' has no drawn masks")
    if max_mask_overlap_px is None:
        max_mask_overlap_px = DEFAULT_MAX_MASK_OVERLAP_PX
    if kind == "lsn":
        try:
            from jsnsynth.lsn.source import LsnSource
        except ImportError as exc:
            raise JsnSynthError(f"source 'lsn' is not available in this installation ({exc})") from None
        return LsnSource(folder, pixel_spacing_mm=pixel_spacing_mm)
    given = {name: value for name, value in (("size_px", size_px), ("pixel_spacing_mm", pixel_spacing_mm))
             if value is not None}
    # one phantom joint per pair
    return open_source(spec, n_joints=max(n_pairs, 1), max_mask_overlap_px=max_mask_overlap_px, **given)


@cli.command("dataset")
@click.option("--source", "source_spec", required=True,
              help="phantom | fingerjoints:DIR | lsn:DIR (crops; a sub-folder of crops is one joint's visits)")
@click.option("--pairs", "n_pairs", required=True, type=click.IntRange(min=1), help="Number of baseline/follow-up pairs.")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(path_type=Path), help="Output folder (new, empty, or an interrupted run to resume).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Base seed; pair i uses SeedSequence([seed, i]).")
@click.option("--num-proc", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes (output bytes do not depend on it).")
@click.option("--shard-size", type=click.IntRange(min=1), default=100, show_default=True, help="Pairs per parquet shard.")
@click.option("--layers-every", type=click.IntRange(min=0), default=10, show_default=True, help="Write the 'layers' config for every k-th pair (1: all, 0: none).")
@click.option("--split", "split_fractions", type=FiniteFloatRange(0.0, 1.0), nargs=3, default=(0.8, 0.1, 0.1), show_default=True, callback=_fractions, help="Train/validation/test fractions of source joints (summing to 1).")
@click.option("--jsn-mm", type=_pair_limit("jsn_mm"), nargs=2, callback=_low_high, default=(-0.5, 0.5), show_default=True, help="Range of the JSN change in mm (+ = narrowing).")
@click.option("--jsn-px", type=_pair_limit("jsn_px"), nargs=2, callback=_low_high, default=None, help="Range of the JSN change in pixels (instead of --jsn-mm; not with it).")
@click.option("--flexion-deg", type=_pair_limit("flexion_deg"), default=2.0, show_default=True, help="Largest rotation of each bone about the joint centre.")
@click.option("--rotation-deg", type=_pair_limit("rotation_deg"), default=3.0, show_default=True, help="Largest global rotation.")
@click.option("--magnification", type=_pair_limit("magnification"), nargs=2, callback=_low_high, default=(0.97, 1.03), show_default=True, help="Range of the global magnification.")
@click.option("--translation-px", type=_pair_limit("translation_px"), default=5.0, show_default=True, help="Largest global translation along x and y.")
@click.option("--soft-tissue-blend-mm", type=FiniteFloatRange(min=0.0, min_open=True), default=2.0, show_default=True,
              help="The soft tissue moves with the bone that carries it, blended across this half-width about the joint line.")
@click.option("--no-noise", is_flag=True, help="Noise-free baseline/follow-up images.")
@click.option("--photons-per-px", type=FiniteFloatRange(min=1.0), nargs=2, callback=_low_high, default=None,
              help="Range of the incident quanta per pixel, drawn log-uniformly for each image "
                   "(default 5e4 1e6, little noise; the quantifier's benchmark: 4e4 5e4 low, 8e3 1.2e4 medium, 2e3 3e3 high).")
@click.option("--heel-gain", type=FiniteFloatRange(0.0, MAX_HEEL_GAIN), nargs=2, callback=_low_high, default=None,
              help="Range of the heel effect drawn for each image: the beam's rise across the picture "
                   "(0.02: 2 %), in a direction drawn uniformly, so that the visits differ by a smooth field "
                   "(default: none).")
@click.option("--motion-blur-px2", type=FiniteFloatRange(0.0, MAX_MOTION_BLUR_PX2), nargs=2, callback=_low_high, default=None,
              help="Range of a motion blur drawn for each image: the extra blur variance (px^2) along a "
                   "direction drawn uniformly, as a patient who moves during the exposure smears it "
                   "(a steady motion of L px adds L^2/12; default: none).")
@click.option("--size", "size_px", type=PHANTOM_SIZE_PX, default=None,
              help="Phantom image size in pixels (--source phantom only; default: the phantom's, 256).")
@click.option("--max-mask-overlap", type=click.IntRange(min=0), default=None,
              help=f"fingerjoints: leave out images whose bone masks overlap by more pixels (layers would be wrong)  [default: {DEFAULT_MAX_MASK_OVERLAP_PX}]")
@click.option("--pixel-spacing", "pixel_spacing_mm", type=PIXEL_SPACING, default=None,
              help="Pixel size in mm: of the phantom's crops, of the fingerjoints crops (which publish none), "
                   "or of the lsn crops (resampled for the network); default 0.175, for lsn a DICOM header's.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def dataset_command(source_spec: str, n_pairs: int, out_dir: Path, seed: int, num_proc: int, shard_size: int,
                    layers_every: int, split_fractions: tuple[float, float, float], jsn_mm: tuple[float, float],
                    jsn_px: tuple[float, float] | None, flexion_deg: float, rotation_deg: float,
                    magnification: tuple[float, float], translation_px: float, soft_tissue_blend_mm: float,
                    no_noise: bool, photons_per_px: tuple[float, float] | None,
                    heel_gain: tuple[float, float] | None, motion_blur_px2: tuple[float, float] | None,
                    size_px: int | None,
                    max_mask_overlap: int | None, pixel_spacing_mm: float | None, quiet: bool) -> None:
    """Write labelled baseline/follow-up pairs with exact JSN as a Hugging Face dataset (Hub layout)."""
    from jsnsynth.synth.dataset import build_dataset
    from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM
    from jsnsynth.synth.pairs import PairConfig
    from jsnsynth.synth.xray import ImagingRanges

    # options that contradict each other are usage errors (exit 2), as a value out of range is
    if photons_per_px is not None and no_noise:
        raise click.UsageError("--photons-per-px sets the noise that --no-noise leaves out: give one of them")
    if jsn_px is not None and click.get_current_context().get_parameter_source("jsn_mm") == ParameterSource.COMMANDLINE:
        # --jsn-px takes the place of --jsn-mm: a mm range given as well was dropped without a word
        raise click.UsageError("--jsn-mm and --jsn-px both set the JSN range: give one of them")
    ranges = {}
    if photons_per_px is not None:
        ranges["photons_per_px"] = tuple(photons_per_px)
    if heel_gain is not None:
        ranges["heel_gain"] = tuple(heel_gain)
    if motion_blur_px2 is not None:
        ranges["motion_blur_px2"] = tuple(motion_blur_px2)
    imaging = ImagingRanges(**ranges)
    pair_config = PairConfig(jsn_mm=jsn_mm, jsn_px=jsn_px, flexion_deg=flexion_deg, rotation_deg=rotation_deg,
                             magnification=magnification, translation_px=translation_px,
                             soft_tissue_blend_mm=soft_tissue_blend_mm, noise=not no_noise, imaging=imaging)
    _warn_of_a_jsn_range_past_a_joints_space(jsn_mm, jsn_px, pixel_spacing_mm or DEFAULT_PIXEL_SPACING_MM)
    source = _dataset_source(source_spec, n_pairs, size_px, max_mask_overlap, pixel_spacing_mm)
    result = build_dataset(source, out_dir, n_pairs, seed=seed, num_proc=num_proc, shard_size=shard_size,
                           split_fractions=split_fractions, layers_every=layers_every, pair_config=pair_config,
                           quiet=quiet)
    sizes = ", ".join(f"{k} {v}" for k, v in result.split_sizes.items())
    click.echo(f"wrote {result.n_pairs} pairs ({sizes}) to {result.out_dir}")
    layers = f'  (layers: load_dataset("{result.out_dir}", "layers"))' if layers_every else ""
    click.echo(f'load with: datasets.load_dataset("{result.out_dir}"){layers}')


def _warn_of_a_jsn_range_past_a_joints_space(jsn_mm: tuple[float, float] | None, jsn_px: tuple[float, float] | None,
                                             spacing_mm: float) -> None:
    """Warn of a JSN range that narrows or widens joints by more than a finger joint's space
    (``jsn_px`` at ``spacing_mm`` where given, else ``jsn_mm``): a range in mm typed as if in px
    (or the reverse) once did so without a word."""
    option, unit, mm_per_unit = ("--jsn-mm", "mm", 1.0) if jsn_px is None else ("--jsn-px", "px", spacing_mm)
    low, high = jsn_mm if jsn_px is None else jsn_px
    for extreme, verb, bound, consequence in (
        (high, "narrows", "up to", "where a pair draws that much its follow-up's bones overlap"),
        (low, "widens", "down to", "no joint widens that much between visits, so such pairs test a quantifier's "
                                   "reach, not its accuracy"),
    ):
        change_mm = extreme * mm_per_unit
        if abs(change_mm) > MAX_JOINT_SPACE_MM and (change_mm > 0) == (verb == "narrows"):
            in_mm = "" if jsn_px is None else f" ({change_mm:.2g} mm at {spacing_mm:g} mm/px)"
            warnings.warn(f"{option} {bound} {extreme:g} {unit}{in_mm} {verb} joints by more than a finger joint's "
                          f"space (about 1-{MAX_JOINT_SPACE_MM:g} mm): {consequence}", stacklevel=3)


@cli.command("publish")
@click.argument("folder", type=NonEmptyPath(path_type=Path))
@click.option("--repo-id", required=True, callback=_repo_id, help="Hub dataset repository, OWNER/NAME.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
def publish_command(folder: Path, repo_id: str, private: bool) -> None:
    """Upload a dataset folder made by 'jsnsynth dataset' to the Hugging Face Hub."""
    from jsnsynth.synth.publish import publish_dataset

    url = publish_dataset(folder, repo_id, private=private)
    click.echo(f"published {folder} to {url}")

# --- quantify commands ----------------------------------------------------------------------


@cli.command("quantify")
@click.argument("baseline", type=NonEmptyPath(path_type=Path))
@click.argument("followup", type=NonEmptyPath(path_type=Path))
@click.option("--upper-mask", required=True, type=NonEmptyPath(path_type=Path), help="Baseline upper-bone mask.")
@click.option("--lower-mask", required=True, type=NonEmptyPath(path_type=Path), help="Baseline lower-bone mask.")
@click.option("--followup-upper-mask", type=NonEmptyPath(path_type=Path), help="Follow-up upper-bone mask (optional).")
@click.option("--followup-lower-mask", type=NonEmptyPath(path_type=Path), help="Follow-up lower-bone mask (optional).")
@click.option("--pixel-spacing", type=PIXEL_SPACING, help="mm/px; default: DICOM header, else 0.175 nominal.")
@click.option("--residual-figure", type=NonEmptyPath(), callback=_file_to_write,
              help="Write the residual maps: PNG, or PDF, SVG or JPEG by the name's suffix.")
@click.option("--json", "json_out", type=NonEmptyPath(), callback=_file_to_write, help="Also write the JSON record here.")
@click.option("--joint-center", type=FiniteFloatRange(), nargs=2, metavar="X Y", default=None,
              help="Joint centre (px) where JSN is read; default: from the baseline masks, as in jsnsynth datasets. "
                   "A point not at the joint the masks show is refused.")
@click.option("--joint-axis-deg", type=FiniteFloatRange(), default=None,
              help="Joint axis angle from +y (upper -> lower bone), degrees, clockwise as the image is shown "
                   "(90: pointing to -x, left); default: from the baseline masks. "
                   "An axis more than 45 deg off the line between the bones' centroids is refused.")
def quantify_command(baseline, followup, upper_mask, lower_mask, followup_upper_mask, followup_lower_mask,
                     pixel_spacing, residual_figure, json_out, joint_center, joint_axis_deg) -> None:
    """Measure JSN progression between BASELINE and FOLLOWUP (JSON on stdout; + = narrowing).

    Images of at least 32x32 px and 64 px on the longer side, at most 4096 px a side, the same
    size; 8- or 16-bit (PNG, JPEG, TIFF, BMP, DICOM), or float TIFF in [0, 1]; bone bright
    (a DICOM's MONOCHROME1 is inverted). Strict JSON (a number that is not finite is null).

    JSN is read at the joint centre along the joint axis. Both default to those of the baseline
    masks, the frame in which jsnsynth datasets state their truth (padding or a fill around the
    picture does not move them). With bones that flex independently, JSN depends on that point.
    """
    if (followup_upper_mask is None) != (followup_lower_mask is None):
        raise click.UsageError("--followup-upper-mask and --followup-lower-mask go together: give both or neither")
    from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_files
    from jsnsynth.synth.io import json_text

    keep_freed_heap()
    record = quantify_files(baseline, followup, upper_mask, lower_mask, followup_upper_mask, followup_lower_mask,
                            pixel_spacing, residual_figure, json_out, joint_center_xy=joint_center,
                            joint_axis_deg=joint_axis_deg)
    click.echo(json_text(record))


@cli.command("quantify-batch")
@click.argument("table", type=NonEmptyPath(path_type=Path))
@click.option("--out", "out_csv", required=True, type=NonEmptyPath(), callback=_file_to_write,
              help="Results table to write (CSV, one row per pair; an interrupted run resumes).")
@click.option("--pixel-spacing", type=PIXEL_SPACING,
              help="mm/px for pairs whose row states none; default: DICOM header, else 0.175 nominal.")
@click.option("--num-proc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (the results do not depend on it).")
def quantify_batch_command(table, out_csv, pixel_spacing, num_proc) -> None:
    """Measure JSN progression for every pair of a CSV TABLE (+ = narrowing).

    TABLE's columns: baseline, followup, upper_mask, lower_mask (paths relative to the table's
    folder), and optionally id, followup_upper_mask, followup_lower_mask, pixel_spacing_mm,
    joint_center_x, joint_center_y, joint_axis_deg, as 'jsnsynth quantify' takes them. --out gets
    id, baseline, followup, jsn_px, jsn_mm, jsn_se_px, jsn_se_mm, reliability, mismatch, flags,
    pixel_spacing_mm, pixel_spacing_source, joint_center_x, joint_center_y, joint_axis_deg and
    error (a refused pair's reason; the others are still measured, and the command then exits 1).
    """
    from jsnsynth.quantify.batch import quantify_table
    from jsnsynth.quantify.quantifier import keep_freed_heap

    keep_freed_heap()
    rows = quantify_table(table, out_csv, pixel_spacing, num_proc=num_proc)
    refused = [row for row in rows if row["error"]]
    click.echo(f"measured {len(rows) - len(refused)} of {len(rows)} pair(s) into {out_csv}")
    if refused:
        first = refused[0]
        raise InputError(f"{len(refused)} of {len(rows)} pair(s) refused; first, {first['id']}: {first['error']}")


@cli.command("validate")
@click.argument("dataset", type=NonEmptyPath(path_type=Path))
@click.option("--method", default="register", show_default=True, callback=_method_spelling,
              help="register, poc, ecc, or module:function with quantify_pair's signature.")
@click.option("--out", "out_dir", type=NonEmptyPath(path_type=Path), help="Write summary.json, pairs.csv and plots here (an interrupted run resumes).")
@click.option("--split", help="Only this split: train, validation or test (default: all, as does 'all').")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many pairs.")
@click.option("--num-proc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (the estimates do not depend on it).")
def validate_command(dataset, method, out_dir, split, limit, num_proc) -> None:
    """Accuracy of a JSN method on a labelled pair DATASET (RMSE, bias, SD, LoA, CRLB, ...)."""
    from jsnsynth.quantify.quantifier import keep_freed_heap
    from jsnsynth.quantify.validate import validate_dataset
    from jsnsynth.synth.io import json_text

    keep_freed_heap()
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON alone, whatever a plug-in prints
        summary = validate_dataset(dataset, method, out_dir, split, limit, num_proc=num_proc)
    click.echo(json_text({"method": summary["method"], "overall": summary["overall"]}))
    if out_dir is not None:
        click.echo(f"report written to {out_dir}", err=True)


@cli.command("validate-real")
@click.argument("folder", type=NonEmptyPath(path_type=Path))
@click.option("--method", default="register", show_default=True, callback=_method_spelling,
              help="register, poc, ecc, or module:function with quantify_pair's signature.")
@click.option("--out", "out_dir", type=NonEmptyPath(path_type=Path), help="Write real_summary.json, real_pairs.csv, real_series.png (an interrupted run resumes).")
@click.option("--limit-series", type=click.IntRange(min=1), help="Only the first N multi-visit series.")
@click.option("--pixel-spacing", "pixel_spacing_mm", type=PIXEL_SPACING, default=None,
              help="The crops' pixel spacing in mm, for the millimetres and the 0.3 mm mismatch limit "
                   "(default: the nominal 0.175).")
@click.option("--num-proc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (the estimates do not depend on it).")
def validate_real_command(folder, method, out_dir, limit_series, pixel_spacing_mm, num_proc) -> None:
    """Real-series protocol on a finger-joint FOLDER: shifted-trial SD, mismatching rate, transitivity."""
    from jsnsynth.quantify.quantifier import keep_freed_heap
    from jsnsynth.quantify.real import validate_real
    from jsnsynth.synth.io import json_text

    keep_freed_heap()
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON alone, whatever a plug-in prints
        summary = validate_real(folder, method, out_dir, limit_series, pixel_spacing_mm=pixel_spacing_mm,
                                num_proc=num_proc)
    click.echo(json_text(summary))
    if out_dir is not None:
        click.echo(f"report written to {out_dir}", err=True)


# --- lsn commands ---------------------------------------------------------------------------


@cli.command("separate")
@click.argument("images", nargs=-1, required=True, type=NonEmptyPath(path_type=Path))
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(path_type=Path), help="Output folder.")
@click.option("--weights", type=NonEmptyPath(path_type=Path), default=None, help="LSN weights file (default: bundled).")
@click.option("--pixel-spacing", "pixel_spacing_mm", type=PIXEL_SPACING, default=None,
              help="Pixel size of the crops in mm (default: DICOM header, else 0.175 mm/px).")
def separate_command(images: tuple[Path, ...], out_dir: Path, weights: Path | None, pixel_spacing_mm: float | None) -> None:
    """Split joint crops (at least 32x32 px, at most 4096 px a side) into soft-tissue, upper- and lower-bone
    layers with the LSN.

    IMAGES are crop files, or folders whose crops (PNG, JPEG, TIFF, BMP, DICOM) are all taken,
    less drawn masks (images of two values), a crop's soft-tissue layer beside it (STEM_soft, as
    finger-joint folders keep it), the layers of a phantom sample (its radiograph.png is the crop)
    and the files separate writes; a folder without crops
    of its own, those of its sub-folders (one joint's visits each; one level).
    Writes per crop STEM: STEM_{soft,upper,lower}.tif (float32 attenuation), STEM_{upper,lower}_mask.png,
    STEM_recomposed.png (16-bit) and STEM_panel.png; a sub-folder's crops into a sub-folder of
    the same name. Each crop's files are written together as it
    is separated; run again, the command skips the crops already written from the same input,
    spacing and weights (an interrupted run resumes). A crop in which no bone is found is named,
    left without files, and the others separated; the command then exits with status 1.
    """
    from jsnsynth.lsn.infer import folder_tree_crops, separate_files
    from jsnsynth.synth.io import DICOM_SUFFIXES, RASTER_SUFFIXES

    crops = []  # (file, its output name: its stem, under its sub-folder's name where it lies in one)
    suffixes = RASTER_SUFFIXES | DICOM_SUFFIXES
    for path in images:
        if path.is_dir():
            # the sub-folders (one joint's visits each) of a folder without crops of its own only:
            # a folder of crops kept its notes, rejects and photos in sub-folders, left alone before
            own = any(p.is_file() and p.suffix.lower() in suffixes for p in path.iterdir())
            crops.extend((crop, f"{folder}/{crop.stem}" if folder else crop.stem)
                         for crop, folder in folder_tree_crops(path, sub_folders=not own))
        else:
            crops.append((path, path.stem))
    files = [crop for crop, _ in crops]
    run = separate_files(files, out_dir, weights=weights, pixel_spacing_mm=pixel_spacing_mm,
                         names=[name for _, name in crops])
    for panel in run.panels:
        click.echo(f"panel: {panel}")
    resumed = f" ({run.resumed} already there)" if run.resumed else ""
    click.echo(f"wrote {len(run.panels) - run.resumed} separation(s) to {out_dir}{resumed}")
    if run.refused:
        names = ", ".join(path.name for path, _ in run.refused[:3]) + (", ..." if len(run.refused) > 3 else "")
        raise InputError(f"{len(run.refused)} of {len(files)} crop(s) not separated, no bone found in them: {names}")


@cli.group("lsn")
def lsn_group() -> None:
    """Layer Separation Network: training."""


@lsn_group.command("train")
@click.option("--config", "config_path", required=True, type=NonEmptyPath(path_type=Path), help="JSON training config.")
@click.option("--out", "out_dir", type=NonEmptyPath(path_type=Path), default=None,
              help="Run folder (checkpoint, log.csv; default runs/lsn/<config name>). Rerun to resume.")
@click.option("--export", "export_path", type=NonEmptyPath(path_type=Path), default=None,
              help="Also write the final weights here (e.g. src/jsnsynth/lsn/weights/lsn_default.pt).")
def lsn_train_command(config_path: Path, out_dir: Path | None, export_path: Path | None) -> None:
    """Train (or resume) the LSN from a JSON config (e.g. src/jsnsynth/lsn/configs/default.json)."""
    from jsnsynth.lsn.train import TrainConfig, train

    config = TrainConfig.from_json(config_path)
    out_dir = out_dir if out_dir is not None else Path("runs") / "lsn" / config_path.stem
    weights = train(config, out_dir, export=export_path, config_path=config_path)
    click.echo(f"log: {out_dir / 'log.csv'}")
    click.echo(f"weights: {weights}")


# --- demo -----------------------------------------------------------------------------------


#: What ``jsnsynth demo`` writes into its folder (a rerun writes there again).
DEMO_OUTPUTS = ("phantoms", "phantoms_panel.png", "dataset", "validation", "crops", "separation")


@cli.command("demo")
@click.option("--out", "out_dir", type=NonEmptyPath(path_type=Path), default=Path("demo_output"), show_default=True,
              help="Folder for everything the demo writes (rerunning resumes).")
@click.option("--pairs", "n_pairs", type=click.IntRange(min=6), default=24, show_default=True,
              help="Pairs in the demo dataset (one phantom joint each: 6 give every split one).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Base seed.")
def demo_command(out_dir: Path, n_pairs: int, seed: int) -> None:
    """Run the whole flow on bundled defaults, no data needed.

    \b
    1. render 8 physics phantoms with exact layers and save a panel;
    2. build a small labelled pair dataset from phantoms;
    3. validate the bundled JSN quantifier on it against the exact truth;
    4. separate four of the phantom radiographs (copied to OUT/crops) into layers with the
       bundled LSN weights.
    """
    from jsnsynth.lsn.infer import separate_files
    from jsnsynth.quantify.validate import validate_dataset
    from jsnsynth.synth.dataset import STATE_NAME, build_dataset
    from jsnsynth.synth.io import check_output_folder
    from jsnsynth.synth.phantom_io import write_phantom_panel, write_phantom_samples
    from jsnsynth.synth.sources import PhantomSource

    check_output_folder(out_dir)  # a file there: one line now, not after the first step
    if (out_dir / STATE_NAME).exists():  # the demo's folders would land inside someone's dataset
        raise JsnSynthError(f"{out_dir}: holds a jsnsynth dataset; give the demo a folder of its own")
    # a folder of other files: the demo wrote its phantoms among them, and stopped at step 2
    # where a `dataset/` of someone else's was there
    # (hidden files aside: a desktop's own, or a part file a killed demo left, which its rerun replaces)
    foreign = (sorted(p.name for p in out_dir.iterdir() if p.name not in DEMO_OUTPUTS and not p.name.startswith("."))
               if out_dir.is_dir() else [])
    if foreign:
        raise JsnSynthError(f"{out_dir}: holds files the demo does not write ({foreign[0]}"
                            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); give the demo a folder of "
                            "its own")
    click.echo(f"[1/4] phantoms -> {out_dir / 'phantoms'}")
    phantoms, _, _ = write_phantom_samples(out_dir / "phantoms", 8, seed=seed)
    samples = sorted(p for p in phantoms.iterdir() if p.is_dir() and not p.name.startswith("."))
    panel = write_phantom_panel(samples, out_dir / "phantoms_panel.png")
    click.echo(f"      panel (radiograph, soft, bones, masks per phantom): {panel}")

    click.echo(f"[2/4] dataset of {n_pairs} baseline/follow-up pairs -> {out_dir / 'dataset'}")
    build_dataset(PhantomSource(n_joints=n_pairs), out_dir / "dataset", n_pairs, seed=seed, quiet=True)
    click.echo(f'      load with: datasets.load_dataset("{out_dir / "dataset"}")')

    click.echo(f"[3/4] validating the bundled quantifier -> {out_dir / 'validation'}")
    summary = validate_dataset(out_dir / "dataset", out_dir=out_dir / "validation")
    overall = summary.get("overall", summary)
    keys = ("n", "rmse_px", "bias_px", "sd_mm", "mismatch_rate", "efficiency")
    click.echo("      " + ", ".join(f"{k}={overall[k]:.4g}" if isinstance(overall.get(k), float) else f"{k}={overall.get(k)}"
                                    for k in keys if k in overall))

    click.echo(f"[4/4] separating 4 phantom radiographs (copied to {out_dir / 'crops'}) with the bundled LSN "
               f"-> {out_dir / 'separation'}")
    crops = out_dir / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    for sample in samples[:4]:  # one file name per crop, so the outputs do not collide
        shutil.copyfile(sample / "radiograph.png", crops / f"{sample.name}.png")
    run = separate_files(sorted(crops.glob("*.png")), out_dir / "separation")
    if run.refused:  # the demo's own phantoms: a broken build, not a user's input
        raise RuntimeError(f"the bundled LSN found no bone in {len(run.refused)} demo phantom(s)")
    click.echo(f"      {len(run.panels)} crops separated; panels: {out_dir / 'separation'}/*panel.png")
    click.echo(f"done: everything is in {out_dir}/")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    # a library's or a plug-in's message may run over several lines; the user gets them on one
    joined = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    click.echo(f"jsnsynth: warning: {one_line(joined, limit=None)}", err=True)


def _silence_opencv_log() -> None:
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _command_path(args: list[str]) -> list[str]:
    """The words of the command ``args`` call, from the top: ``["jsnsynth", "lsn", "train"]``."""
    words, command = ["jsnsynth"], cli
    for arg in args:
        if not isinstance(command, click.Group):
            break
        if arg.startswith("-"):  # the group's own options (--version, --help)
            continue
        if arg not in command.commands:
            break
        words.append(arg)
        command = command.commands[arg]
    return words


def _interrupted(args: list[str]) -> str:
    """The line for a run stopped by Ctrl-C: how to go on where the command can resume."""
    path = _command_path(args)
    command = path[1] if len(path) > 1 else ""
    with_out = any(arg == "--out" or arg.startswith("--out=") for arg in args)
    if command in ("dataset", "phantom", "demo", "lsn", "separate", "quantify-batch") or \
            (command in ("validate", "validate-real") and with_out):
        return "jsnsynth: interrupted; rerun the same command to resume"
    return "jsnsynth: interrupted"


def _usage_error_line(exc: click.UsageError, args: list[str]) -> str:
    """A usage error (an option missing or out of range, an unknown command) as our one line,
    with where to read the command's options, instead of click's four-line block."""
    # an option given without its value fails before click makes the command's context
    command_path = exc.ctx.command_path if exc.ctx is not None else " ".join(_command_path(args))
    return f"jsnsynth: error: {one_line(exc.format_message(), limit=None, whole=True)} (see '{command_path} --help')"


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (the console-script entry point)."""
    args = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _one_line_warning
    # numpy's floating-point warnings and OpenCV's log lines are for developers; the user gets
    # one line from jsnsynth, which checks the inputs those would be about
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    _silence_opencv_log()
    try:
        # argv as given: click expands wildcards itself on Windows only when it reads sys.argv
        cli.main(args=argv, prog_name="jsnsynth", standalone_mode=False)
    except (click.exceptions.Abort, _Interrupted):
        click.echo(_interrupted(args), err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `jsnsynth`: the help is the answer
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(_usage_error_line(exc, args), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except JsnSynthError as exc:
        # our messages quote file names and values, which may hold a newline or control bytes
        click.echo(f"jsnsynth: error: {one_line(str(exc), limit=None, whole=True)}", err=True)
        return 1
    except Exception as exc:  # a bug or an unforeseen input: still one line unless asked
        if os.environ.get("JSNSYNTH_DEBUG"):
            raise
        click.echo(f"jsnsynth: error: {exception_line(exc)} (set JSNSYNTH_DEBUG=1 for a traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
