"""jsnsynth: finger-joint radiographs with exactly known joint space narrowing (JSN).

Sub-packages
------------
synth
    Layer data model, X-ray forward model, physics phantom, real-data loading, controlled
    shifts, longitudinal pairs, dataset building and Hub publishing.
lsn
    Layer Separation Network: splits a joint crop into soft tissue, upper and lower bone layers.
quantify
    Registration quantifier of JSN progression and the validation harness.

Sign convention (used everywhere): image coordinates are (x, y) = (column, row) with y pointing
down; the joint axis points from the upper bone to the lower bone. JSN progression is
``dy_upper - dy_lower`` along that axis at the joint centre: positive means narrowing.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jsnsynth")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
