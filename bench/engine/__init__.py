"""The engine layer: compiled training.

It turns a suite's cells into groups that share one compiled program
(`program`), trains a group chunk by chunk (`loop`), runs a suite into a
results store (`runner`), measures gradients at initialisation (`probe`), and
holds sharding over clusters (`cluster`), the persistent compilation cache
(`compile_cache`) and FLOP counting (`flops`). It may import spec/ and
records/, never analysis/ or reports/ (tests/test_layers.py checks the
layering).
"""
