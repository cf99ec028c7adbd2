"""Gradient-explosion benchmark harness: suite -> cells -> engine -> records -> reports."""
