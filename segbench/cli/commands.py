"""The ``segbench`` commands besides Lightning's ``fit``, ``validate``, ``test`` and ``predict``:
name -> the module whose ``main(argv)`` runs it. Imported by name when called, so the command
starts without importing every tool. A new command is one line here."""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    # studies: ablations -> runs -> verdicts
    "sweep": "segbench.study.sweep",
    "report": "segbench.study.report",
    "claims": "segbench.study.claims",
    "tune": "segbench.study.tune",
    # measurement tools: a trained model, or a data set's labels
    "erf": "segbench.analysis.erf",
    "gridding": "segbench.analysis.gridding",
    "feature-norms": "segbench.analysis.feature_norms",
    "ld-masks": "segbench.analysis.ld_masks",
    "upper-bound": "segbench.analysis.upper_bound",
    "cue-distance": "segbench.analysis.cue_distance",
    "summary": "segbench.analysis.summary",
    # using a trained model
    "export": "segbench.deploy.export",
    # speed, and data preparation
    "benchmark": "segbench.benchmark",
    "convert-sbd": "segbench.data.convert_sbd",
}
