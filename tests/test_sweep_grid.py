"""The sweep's ComfyUI comparison grid: one column per variant, base first, same seed per row."""

import json
from pathlib import Path

import pytest

pytest.importorskip("kohyawan.comfy.grid")   # on main since the comfy merge

from kohyawan.batch import sweep_grid  # noqa: E402


def _doc(tmp_path, experts=("both",)):
    rows = []
    for variant in ("conservative", "standard", "aggressive"):
        run_dir = tmp_path / "runs" / f"ab-{variant}"
        run_dir.mkdir(parents=True)
        outputs = []
        for expert in experts:
            stage = {"both": "train", "high": "train_high", "low": "train_low"}[expert]
            f = run_dir / f"{variant}-{expert}.safetensors"
            f.write_bytes(variant.encode() + expert.encode())
            outputs.append({"stage": stage, "path": str(f)})
        (run_dir / "run.json").write_text(json.dumps({"status": "succeeded", "final": {**outputs[-1], "outputs": outputs}}))
        rows.append({"variant": variant, "state": "succeeded", "run_dir": str(run_dir)})
    rows.append({"variant": "broken", "state": "failed", "run_dir": None})
    return {"name": "ab", "seed": 42, "task": "t2v-A14B", "variants": rows}


def test_grid_has_a_column_per_variant_and_the_base_model_with_shared_seeds(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sarah walks\nsarah waves\n")
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "loras").mkdir(parents=True)
    result = sweep_grid.build(_doc(tmp_path), prompts, tmp_path / "grid", strength=0.8, comfyui=comfy)
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [c["key"] for c in grid["columns"]] == ["base", "conservative", "standard", "aggressive"]
    assert [c["label"] for c in grid["columns"]][1] == "conservative @ 0.80"
    assert len(grid["cells"]) == 8 and result["workflows"] == 8
    for p in (1, 2):
        row = [c for c in grid["cells"] if c["prompt_index"] == p]
        assert len({c["seed"] for c in row}) == 1 and [c["column"] for c in row][0] == "base"
    ids = [c["id"] for c in grid["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in grid["cells"]:
        graph = json.loads((tmp_path / "grid" / cell["workflow"]).read_text())
        loras = [n["inputs"]["lora_name"] for n in graph.values() if n["class_type"] == "LoraLoaderModelOnly"]
        prefixes = [n["inputs"]["filename_prefix"] for n in graph.values() if "filename_prefix" in n["inputs"]]
        assert prefixes == [f"kohyawan_grid/ab/{cell['id']}"]
        if cell["column"] == "base":
            assert loras == []
        else:
            assert set(loras) == {f"kohyawan-sweeps/ab/{cell['column']}.safetensors"}
    deployed = comfy / "models" / "loras" / "kohyawan-sweeps" / "ab" / "standard.safetensors"
    assert deployed.read_bytes() == b"standardboth" and len(result["deployed"]) == 3


def test_expert_pairs_go_to_their_experts(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    manifest, files = sweep_grid.plan(_doc(tmp_path, experts=("high", "low")), ["x"], include_base=False)
    assert [n for n, _ in files][:2] == ["kohyawan-sweeps/ab/conservative_high.safetensors",
                                         "kohyawan-sweeps/ab/conservative_low.safetensors"]
    cell = manifest["cells"][0]
    assert cell["loras_high"] == [["kohyawan-sweeps/ab/conservative_high.safetensors", 1.0]]
    assert cell["loras_low"] == [["kohyawan-sweeps/ab/conservative_low.safetensors", 1.0]]


def test_no_finished_variant_is_a_clear_error(tmp_path):
    from kohyawan.errors import BadInput

    doc = {"name": "ab", "seed": 1, "task": "t2v-A14B", "variants": [{"variant": "a", "state": "failed", "run_dir": None}]}
    with pytest.raises(BadInput, match="no finished variant"):
        sweep_grid.plan(doc, ["x"])


@pytest.mark.slow
def test_grid_runs_on_a_comfyui_server_and_makes_a_contact_sheet(tmp_path):
    from comfy_fake_server import FakeComfy, ffmpeg_path

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sarah walks\n")
    names = [f"kohyawan-sweeps/ab/{v}.safetensors" for v in ("conservative", "standard", "aggressive")]
    with FakeComfy(tmp_path / "comfy", loras=names, ffmpeg=ffmpeg_path()) as server:
        result = sweep_grid.build(_doc(tmp_path), prompts, tmp_path / "grid", server=server.url)
    assert result["ran"] and Path(result["contact_sheet"]).is_file()
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [c["status"] for c in grid["cells"]] == ["done"] * 4


def test_grid_that_does_not_validate_on_the_server_queues_nothing(tmp_path):
    from comfy_fake_server import FakeComfy, ffmpeg_path

    from kohyawan.errors import WorkFailed

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sarah walks\n")
    with FakeComfy(tmp_path / "comfy", loras=["other.safetensors"], ffmpeg=ffmpeg_path()) as server:
        with pytest.raises(WorkFailed, match="does not validate") as info:
            sweep_grid.build(_doc(tmp_path), prompts, tmp_path / "grid", server=server.url)
    assert "kohyawan-sweeps/ab/conservative.safetensors" in str(info.value)
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert {c["status"] for c in grid["cells"]} == {"planned"}
