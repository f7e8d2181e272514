"""Tiny modules kohyawan puts on the trainer's PYTHONPATH (they run inside musubi-tuner's python)."""
