"""Trainer-specific knowledge. Only musubi-tuner is supported; everything about it lives here."""
