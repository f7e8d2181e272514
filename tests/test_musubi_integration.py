"""Optional: check rendered configs with musubi-tuner's own parser and dataset schema.

Set KOHYAWAN_MUSUBI_CHECK to a checker program that takes a render folder and exits 0 when musubi-tuner
accepts it (one is described in the README, "Checking against the real trainer"). Skipped otherwise.
"""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import make_dataset, make_models
from kohyawan.config import profiles, render
from kohyawan.config.spec import Models

CHECKER = os.environ.get("KOHYAWAN_MUSUBI_CHECK")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not CHECKER, reason="KOHYAWAN_MUSUBI_CHECK is not set")]


@pytest.mark.parametrize("task,expert", [("t2v-A14B", "both"), ("t2v-A14B", "sequential"), ("i2v-A14B", "both")])
def test_real_parser_accepts_the_render(tmp_path, task, expert):
    data = make_dataset(tmp_path / "data set", images=2, videos=2)
    models = make_models(tmp_path / "models", task)
    spec = profiles.resolve("motion", variant="aggressive", task=task, expert=expert, dataset_dir=data,
                            models=Models(**models))
    render.write_plan(render.build_plan(spec, tmp_path / "out"))
    result = subprocess.run([CHECKER, str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
