"""Layer Separation Network: split a joint crop into soft-tissue, upper- and lower-bone layers.

Public API (import from the submodules; torch is imported only when they are):

* :func:`jsnsynth.lsn.infer.load_model`, :func:`jsnsynth.lsn.infer.separate_intensity`,
  :func:`jsnsynth.lsn.infer.separate_files` — separation with the bundled weights (offline);
* :class:`jsnsynth.lsn.source.LsnSource` — a folder of crops as a dataset source (contract 2);
* :func:`jsnsynth.lsn.train.train`, :class:`jsnsynth.lsn.train.TrainConfig` — training;
* :class:`jsnsynth.lsn.model.LayerSeparationNet` — the network;
* :mod:`jsnsynth.lsn.data`, :mod:`jsnsynth.lsn.evaluate` — training data and metrics.

See docs/lsn.md (the model card).
"""
