"""The PyTorch comparison of `bench peers`.

`cases` holds the one-cell suites compared and times both sides; `pytorch`
holds the same models, data and optimiser chain as an idiomatic PyTorch eager
loop (PyTorch is optional). It may import spec/ and engine/, never records/,
analysis/ or reports/ (tests/test_layers.py checks the layering).
"""
