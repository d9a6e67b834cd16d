"""Measurement tools on one skeleton (:mod:`segbench.analysis.tool`): a trained model's effective
receptive field, gridding, feature norms and LD masks, a model summary; a data set's labels
(the upsampling upper bound, cue distances)."""
