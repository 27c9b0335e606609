"""Layers data model, X-ray forward model, phantom, real-data layering, shifts, pairs, datasets.

``synth`` depends on nothing else in jsnsynth; ``lsn`` and ``quantify`` build on its data model.
"""
