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
