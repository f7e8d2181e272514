# Rehearsal stand-in for musubi-tuner's wan_cache_text_encoder_outputs.py (kohyawan --rehearse): no training happens.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from kohyawan.rehearse.cache import main_text  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_text())
