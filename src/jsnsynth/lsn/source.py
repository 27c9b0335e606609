"""Any folder of radiograph crops as a source of joint layers (contract 2), via the LSN.

``jsnsynth dataset --source lsn:DIR`` builds :class:`LsnSource` ``(DIR)``: every crop in the
folder (less the files ``jsnsynth separate`` writes) is one joint (joint id = file stem), and
every sub-folder of crops is one joint whose crops are its visits (joint id = the sub-folder's
name), so that a dataset's splits keep the visits of a joint together; ``load`` separates a
crop with the bundled model (or given weights) into soft-tissue, upper- and lower-bone layers,
which the pair simulator then warps like any real source's raster layers.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.lsn.infer import (DEFAULT_WEIGHTS, SEPARATION_REVISION, folder_tree_crops, load_model,
                                separate_intensity, warn_if_doubtful)
from jsnsynth.synth.io import check_measurable_size, files_digest, read_radiograph
from jsnsynth.synth.layers import JointLayers, check_joint_masks, mask_overlap_share
from jsnsynth.synth.limits import MAX_MASK_OVERLAP

#: Provenance written into dataset cards built from this source.
LSN_CITATION = (
    "Layers separated from user-supplied radiograph crops by the jsnsynth Layer Separation Network "
    "(bundled weights trained on the BLS-GAN finger-joint crops (pokeblow/BLS-GAN; Wang et al., "
    "AAAI 2025) and jsnsynth phantoms; see docs/lsn.md)."
)


#: Least brightest-pixel intensity of a crop the source takes (share of its file's range): the
#: pairs' display windows (:class:`~jsnsynth.synth.xray.ImagingRanges`: black at up to 0.08)
#: are set for crops that use the range, and 12-bit data written unscaled into a 16-bit file
#: (peak 1/16) made blank follow-ups, which ``validate`` then counted as the method's failures.
MIN_CROP_PEAK = 0.25


def check_crop_range(intensity: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse a crop whose brightest pixel is under :data:`MIN_CROP_PEAK` of its file's range.

    Raises:
        InputError: naming the file and its peak.
    """
    peak = float(intensity.max())
    if peak < MIN_CROP_PEAK:
        raise InputError(f"{path}: its brightest pixel is {peak:.1%} of the file's range (12- or 14-bit data written "
                         "unscaled into a 16-bit file?); the pairs' display windows would leave it blank: store it at "
                         "the full range")


def _check_crop(path: Path) -> None:
    """Refuse, up front, a crop the source cannot take (a damaged, too small or too faint one is
    an error before anything is written)."""
    intensity = read_radiograph(path).intensity
    check_measurable_size(intensity.shape, path)
    check_crop_range(intensity, path)


def joint_crops(root: str | os.PathLike) -> dict[str, list[Path]]:
    """The crops of a folder by joint (:func:`~jsnsynth.lsn.infer.folder_tree_crops`): each crop
    of the folder itself a joint (id its stem), each sub-folder that holds crops one joint whose
    crops are its visits (id its name). Drawn masks are no crops, wherever they are (a sub-folder
    of masks beside the crops is no joint).

    Raises:
        InputError: a missing folder, one without crops, a crop's stem that is also a
            sub-folder's name, or a crop that cannot be read, is too small to measure or too
            faint (:func:`check_crop_range`).
    """
    joints: dict[str, list[Path]] = {}
    single: set[str] = set()  # the joints that are a crop of the folder itself
    for path, folder in folder_tree_crops(root):
        _check_crop(path)
        if not folder:
            if path.stem in joints:
                raise InputError(f"{path}: two crops share the joint id '{path.stem}'")
            joints[path.stem] = [path]
            single.add(path.stem)
        elif folder in single:
            raise InputError(f"{path.parent}: a sub-folder (one joint's visits) named as the crop {joints[folder][0].name}")
        else:
            joints.setdefault(folder, []).append(path)
    return joints


class LsnSource:
    """Radiograph crops in a folder, separated into layers by the LSN.

    Args:
        root: folder of crops (PNG, JPEG, TIFF, BMP or DICOM; 8 or 16 bit), joint axis vertical,
            upper bone on top: each a joint, and each sub-folder of crops one joint whose crops
            are its visits (:func:`joint_crops`).
        pixel_spacing_mm: the crops' pixel size (None: a DICOM header's spacing, else the
            training spacing 0.175 mm/px). Crops at another spacing are resampled for the
            network and the layers returned on the crop's own grid.
        weights: LSN weights file (default: the bundled weights).

    Raises:
        InputError: a missing folder, a folder without images, an unreadable crop, one smaller
            than the quantifier measures or one too faint (:func:`check_crop_range`; checked up
            front), or missing weights.
    """

    name = "lsn"
    citation = LSN_CITATION
    exact_pose_rendering = False

    def __init__(
        self,
        root: str | os.PathLike,
        pixel_spacing_mm: float | None = None,
        weights: str | os.PathLike | None = None,
    ) -> None:
        self.root = Path(root)
        # the crops `separate` takes (run on a folder it wrote into, its layers are no crops),
        # each read and checked up front
        self._files = joint_crops(self.root)
        self.pixel_spacing_mm = pixel_spacing_mm
        self.weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self._model = load_model(self.weights)
        self._loaded_once: set[Path] = set()  # crops whose warnings were shown, at their first load

    def joint_ids(self) -> list[str]:
        """File stems and sub-folder names, sorted."""
        return sorted(self._files)

    def load(self, joint_id: str, rng: np.random.Generator) -> JointLayers:
        """Separate the crop ``joint_id``, or of a sub-folder's joint one of its visits drawn from
        ``rng`` (the separation itself is deterministic; a joint of one crop draws nothing)."""
        if joint_id not in self._files:
            raise InputError(f"{self.root}: no crop named '{joint_id}'")
        visits = self._files[joint_id]
        return self._separated(joint_id, visits[int(rng.integers(len(visits)))] if len(visits) > 1 else visits[0])

    def _separated(self, joint_id: str, path: Path) -> JointLayers:
        """The layers of the crop at ``path``, one of joint ``joint_id``'s."""
        radiograph = read_radiograph(path)
        spacing = self.pixel_spacing_mm if self.pixel_spacing_mm is not None else radiograph.pixel_spacing_mm
        with warnings.catch_warnings():
            # what the separation says of a crop is said at its first load (check_joints): the
            # same crop separated again for every pair, in any worker, says nothing new
            if path in self._loaded_once:
                warnings.simplefilter("ignore")
            separation = separate_intensity(radiograph.intensity, self._model, spacing, name=str(path))
        layers = separation.layers
        if not (layers.upper_mask.any() and layers.lower_mask.any()):
            raise InputError(f"{path}: the LSN found no {'upper' if not layers.upper_mask.any() else 'lower'} bone")
        try:  # the pairs need a joint: said here, where the crop can be named
            check_joint_masks(layers.upper_mask, layers.lower_mask)
        except InputError as exc:
            raise InputError(f"{path}: the LSN's bones do not make a joint ({exc})") from None
        overlap = mask_overlap_share(layers.upper_mask, layers.lower_mask)
        if overlap > MAX_MASK_OVERLAP:  # every pair of the crop would be refused by `quantify`, as a failure
            raise InputError(f"{path}: the LSN's bone masks overlap by {overlap:.0%} of the smaller one (more than "
                             f"{MAX_MASK_OVERLAP:.0%}): not two bones whose JSN a pair could measure; leave the crop out")
        if path not in self._loaded_once:  # (a crop refused above needs no warning beside its error)
            self._loaded_once.add(path)
            warn_if_doubtful(radiograph.intensity, separation, self._model, spacing, str(path))
        metadata = dict(layers.metadata)
        metadata.update(joint_id=joint_id, image=path.relative_to(self.root).as_posix(), bit_depth=radiograph.bit_depth,
                        weights=self.weights.name)
        return layers.replace(metadata=metadata)

    def check_joints(self, joint_ids: list[str]) -> None:
        """Separate each crop of ``joint_ids`` once, before a dataset is written: a crop in which
        the LSN finds no joint stopped a build where its first pair fell, and removing the crop
        changed the source, so the run could not be resumed.

        Raises:
            InputError: the first crop whose separation makes no joint, named.
        """
        for joint_id in joint_ids:
            for path in self._files[joint_id]:  # every visit of a sub-folder's joint
                self._separated(joint_id, path)

    def describe(self) -> dict:
        """Generation parameters of the source, for the dataset card."""
        return {
            "source": self.name,
            "root": str(self.root),
            "n_joints": len(self._files),
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "weights": self.weights.name,
            # a run resumed across a change of the separation would mix two kinds of layers
            "separation_revision": SEPARATION_REVISION,
        }

    def content_digest(self) -> str:
        """:func:`~jsnsynth.synth.io.files_digest` of the crops and the weights."""
        return files_digest({**{f"crops/{path.relative_to(self.root).as_posix()}": path
                                 for paths in self._files.values() for path in paths}, "weights": self.weights})
