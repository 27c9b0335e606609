"""A JSN method of your own, scored by `jsnsynth validate` against a dataset's exact truth.

Any callable with the quantifier's signature can be validated:

    jsnsynth validate DATASET --method my_jsn_method:centroid_jsn --out report/

(run from this folder, or put the module on PYTHONPATH). It receives the baseline and follow-up
as stored (uint16 in jsnsynth datasets, the crops' own type in `validate-real`), the baseline
masks as bool arrays and the pixel spacing (and whichever of the follow-up masks and the joint
frame it takes as keywords), and returns the JSN progression in pixels (positive = narrowing),
or a dict with "jsn_px".

This toy method compares the intensity-weighted centroids of each bone's region, so it is fooled
by repositioning and exposure changes: a baseline to beat.
"""

from __future__ import annotations

import numpy as np


def _weighted_row(image: np.ndarray, mask: np.ndarray) -> float:
    rows = np.nonzero(mask)[0]
    weights = image[mask]
    return float((rows * weights).sum() / weights.sum())


def centroid_jsn(
    baseline: np.ndarray,
    followup: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    pixel_spacing_mm: float = 0.175,
    **_: object,
) -> float:
    """JSN (px) as the change of the vertical distance between the two bones' centroids."""
    before = _weighted_row(baseline, lower_mask) - _weighted_row(baseline, upper_mask)
    after = _weighted_row(followup, lower_mask) - _weighted_row(followup, upper_mask)
    return before - after
