"""The reports layer: what a reader sees.

It renders results as Markdown (`report`) and figures (`plots`), exports them
for CI dashboards and other tools (`export`), and draws the terminal's
progress and tables (`console`). It may import spec/, records/ and
analysis/, never engine/ (tests/test_layers.py checks the layering).
"""
