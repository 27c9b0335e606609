"""Registration quantifier of JSN progression, reference methods and the validation harness.

Public entry points:

- :func:`jsnsynth.quantify.quantifier.quantify_pair` -> :class:`~jsnsynth.quantify.quantifier.JsnResult`
- :func:`jsnsynth.quantify.validate.validate_dataset` (any method with ``quantify_pair``'s signature)
- :func:`jsnsynth.quantify.real.validate_real` (real-series protocol without ground truth)
- :func:`jsnsynth.quantify.reference.poc_quantify`, :func:`jsnsynth.quantify.reference.ecc_quantify`
- :func:`jsnsynth.quantify.crlb.jsn_crlb_px` (Cramér-Rao bound of a pair's JSN)

Sign convention: JSN progression > 0 means narrowing (docs/quantify.md).
"""
