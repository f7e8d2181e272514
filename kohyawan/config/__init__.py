"""The plan: profiles and layering, the frozen RunSpec, validation, and rendering into the trainer's
exact files and command lines (pure; see docs/architecture.md).
"""
