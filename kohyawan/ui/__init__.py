"""``kohyawan ui``: a local web dashboard over the files kohyawan writes (runs, checkpoints, the registry,
test grids, sweeps and batches). It has no database of its own and reads everything through the same
library functions as the CLI. Needs the ``ui`` extra (starlette, uvicorn); the CLI never imports it."""
