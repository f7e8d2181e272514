"""Will it fit, how long, what will it cost: the memory and time models, the user's own observations,
and the GPU offers the estimate prices against (pure; see docs/architecture.md).
"""
