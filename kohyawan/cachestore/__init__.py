"""The cache store that runs, sweeps and batches share: latent and text-encoder cache folders keyed by what
their files depend on, each item cached once (see docs/architecture.md, "Caches")."""
