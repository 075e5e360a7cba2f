"""Evaluation: does the model rely on the region its map highlights?

- evaluate.py, calibrate.py, sanity.py: the `evaluate`, `calibrate` and `sanity` commands;
- explainers.py: every map scored (learned, Grad-CAM, random; edges and boxes as controls), one call each;
- passes.py: the passes over the test set;  summary.py: metrics.json from them;  schema.py: its schema;
- metrics.py: pure metric functions;  road.py: ROAD's imputation;  curves.py: deletion and insertion curves;
- randomisation.py: the randomisation check;  confounders.py: the confounder audit (--confounders);
- thresholds.py: the rule that calls a finding positive;  calibration.py: the calibration section.
"""
