"""Helpers for the batch/sweep/slurm tests: manifests, datasets, and how children call kohyawan."""

import sys
import textwrap
from pathlib import Path

from conftest import make_dataset

HERE = Path(__file__).parent

# The kohyawan CLI as a process: what batch children run (the default; passed explicitly where a test
# calls the library, so the contract is visible).
CLI = (sys.executable, "-m", "kohyawan")

FAST_ENV = {"KOHYAWAN_REHEARSE_STEP_S": "0.02", "KOHYAWAN_REHEARSE_STARTUP_S": "0.05",
            "KOHYAWAN_REHEARSE_CACHE_S": "0.01"}


def write_manifest(folder: Path, body: str, datasets=("sarah", "tom", "ana")) -> Path:
    folder = Path(folder)
    for i, name in enumerate(datasets):
        make_dataset(folder / "data" / name, images=3 + i)
    path = folder / "clients.toml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path
