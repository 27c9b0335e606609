"""Ranges the synth options accept, in a module that imports nothing, so that the command line
can state them in its options' types without loading the numerics at start-up."""

#: Allowed values of the ranges of :class:`jsnsynth.synth.pairs.PairConfig` (inclusive).
PAIR_OPTION_LIMITS = {
    "jsn_mm": (-5.0, 5.0),
    "jsn_px": (-32.0, 32.0),
    "flexion_deg": (0.0, 30.0),
    "rotation_deg": (0.0, 45.0),
    "magnification": (0.5, 2.0),
    "translation_px": (0.0, 64.0),
}

#: The widest space of a healthy finger joint (mm; MCP joints about 1.5-2 mm, PIP about 1): a
#: narrowing beyond it puts the follow-up's bones over each other, which the physics renders
#: (attenuation adds) but no joint does, so a dataset range reaching past it is warned about.
MAX_JOINT_SPACE_MM = 2.0

#: Largest heel gain of the imaging chain (:attr:`jsnsynth.synth.xray.ImagingParams.heel_gain`): a
#: beam half again as bright on one side of the picture as on the other is far beyond the few per
#: cent a heel effect puts across a joint crop.
MAX_HEEL_GAIN = 0.5

#: Largest extra blur variance along a motion (px^2; :attr:`jsnsynth.synth.xray.ImagingParams.motion_blur_px2`):
#: a steady motion of length ``L`` px during the exposure adds ``L^2 / 12`` along it, so 16 px^2
#: is a 14 px (2.4 mm at 0.175 mm/px) smear, far more than a radiograph that is not taken again shows.
MAX_MOTION_BLUR_PX2 = 16.0

#: Images whose drawn masks overlap by more than this are left out by default: mask-based
#: layering shares the overlapped bone evenly between the two layers, so half of it would move
#: with the other bone (on the dev crops such pairs read 0.36 px RMSE against 0.06 px without).
DEFAULT_MAX_MASK_OVERLAP_PX = 200

#: Largest image side a command accepts (a phantom's size, an image ``quantify`` or ``separate``
#: reads): at the finest pixel spacing (0.02 mm) 82 mm, a whole finger and more. They work on
#: joint crops and their memory grows with the area (a 2048 px dataset pair takes 0.9 GB, a 4096 px
#: pair 6 GB and 70 s in ``quantify``), so a whole radiograph, or a mistyped size, is refused
#: rather than left to run out of memory.
MAX_SIDE_PX = 4096

#: Largest field of view (mm, the longer side times the pixel spacing) that frames one joint as a
#: crop does (256 px at 0.175 mm/px is 45 mm; a whole finger about 100 mm): a phantom framing
#: more is warned about, and so is a crop ``separate`` is told frames more (a pixel spacing
#: mistyped, or a crop taken at the training spacing that is surely finer).
MAX_CROP_FIELD_MM = 120.0

#: Smallest field of view (mm) that frames a joint as a crop does: the heads of a finger joint's
#: bones are 10-20 mm across. A crop ``separate`` is told frames less is warned about. (The
#: phantom's millimetres are those of the nominal spacing, twice these:
#: ``phantom.MIN_PHANTOM_CROP_FIELD_MM``.)
MIN_CROP_FIELD_MM = 15.0

#: Smallest image side the quantifier accepts (and the ``fingerjoints`` source, whose pairs it measures).
MIN_SIDE_PX = 32
#: Smallest longer side of the picture the quantifier registers: a quarter of the 256 px crops its
#: lengths were set on, where the bands are 1-3 px. Below it the error grows fast: 30
#: default-noise phantom pairs reduced by pixel area measured JSN RMSE 0.0094 px at 256 px, 0.073
#: at 64, 0.18 at 48 and 0.98 at 32 (in pixels of the 256 px grid; 0.17 mm at 32 px;
#: bench_quantify_resolution.py).
MIN_LONG_SIDE_PX = 64

#: Share of the smaller bone mask the two may have in common: past it they are not two bones
#: (one label image given as both, or one bone drawn twice), and ``quantify`` refuses them.
MAX_MASK_OVERLAP = 0.5
