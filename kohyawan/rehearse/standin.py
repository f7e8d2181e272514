"""What marks the simulated trainer as a stand-in: its musubi-tuner-shaped checkout folder and the banner
every simulated script prints first (see ``kohyawan/rehearse/__init__.py`` for the whole package)."""

from pathlib import Path

BANNER = "*** KOHYAWAN REHEARSAL: simulated trainer - NO TRAINING HAPPENS, no model is loaded ***"


def trainer_dir() -> Path:
    """A folder laid out like a musubi-tuner checkout whose scripts run the simulation."""
    return Path(__file__).resolve().parent / "musubi"
