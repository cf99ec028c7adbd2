"""The analysis layer: reading records.

It holds the statistical tests and effect sizes (`stats`), the verdicts on a
suite's claims (`claims`), cell-by-cell comparison of two results
(`compare`) and the rerun of recorded cells (`reproduce`). It may import
spec/, records/ and engine/, never reports/ (tests/test_layers.py checks the
layering).
"""
