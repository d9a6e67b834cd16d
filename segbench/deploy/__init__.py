"""Using a trained model outside training: the Python API (:mod:`.api`: ``segbench.load``,
predict, overlays) and export (:mod:`.export`, ``segbench export``)."""
