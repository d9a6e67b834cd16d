"""Using a trained model outside training: export (:mod:`.export`, ``segbench export``)."""
