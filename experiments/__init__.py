"""Measurements behind committed results (docs/results/README.md lists each with its command).

Run from the repository root, e.g. ``python -m experiments.calibrate_quality --help``; what the
experiments share (data and package paths, the kept ensemble members, their fusion, the bad-AoP
threshold, how a candidate check is ranked) is in :mod:`experiments.common`.
"""
