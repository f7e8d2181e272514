"""A babysat training run: the attempt loop, process supervision, guard, watchdogs, the fallback
ladder and its rungs, the ledger, the live view, locks, caches and LR continuation
(see docs/architecture.md, "A run").
"""
