"""The records layer: what a run keeps and how it is measured.

It holds the metrics of docs/METHODS.md (`metrics`), a cell's record built
from its runs (`cell`), the results store on disk (`store`), the environment
a record was made in (`env`) and its throughput yardsticks (`calibrate`). It may
import spec/, never engine/, analysis/ or reports/ (tests/test_layers.py
checks the layering).
"""
