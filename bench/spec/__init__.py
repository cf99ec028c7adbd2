"""The suite layer: what a suite asks for and how its parts are built.

It holds the schema of every suite key (`schema`, `claim_schema`), the suite
file turned into validated cells (`suite`), the registries of optimisers,
transforms and mitigations (`optim`), and how a model or task is built from a
cell's config (`build`). It is the bottom layer: it imports only itself,
models/ and tasks/, never engine/, records/, analysis/ or reports/
(tests/test_layers.py checks the layering).
"""
