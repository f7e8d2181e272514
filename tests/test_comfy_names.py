"""`comfy workflow`/`grid` say when a LoRA is named by a local path, and never create a missing --out folder
(issue 15, item 12)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kohyawan(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kohyawan", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_a_registry_path_as_lora_name_is_warned_about(tmp_path):
    folder = tmp_path / "registry" / "characters" / "demo"
    folder.mkdir(parents=True)
    lora = folder / "wan2.2_character_sarah_v1_20261128.safetensors"
    lora.write_bytes(b"{}")
    rel = "registry/characters/demo/wan2.2_character_sarah_v1_20261128.safetensors"
    r = kohyawan("comfy", "workflow", "--lora", rel, "--prompt", "x", "--out", "wf.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"warning: --lora {rel} is a file path on this machine, but ComfyUI's lora_name")
    assert "kohyawan/character/wan2.2_character_sarah_v1_20261128.safetensors" in r.stderr
    names = {n["inputs"]["lora_name"] for n in json.loads((tmp_path / "wf.json").read_text()).values()
             if n["class_type"] == "LoraLoaderModelOnly"}
    assert names == {rel}  # written as given: the warning says so

    r = kohyawan("comfy", "workflow", "--lora", str(lora), "--out", "wf2.json", cwd=tmp_path)
    assert r.returncode == 0 and f"--lora {lora} is a file path" in r.stderr

    r = kohyawan("comfy", "grid", "--lora", f"{lora}:0.8", "--prompts", "p.txt", "--out", "grid", cwd=tmp_path)
    assert f"--lora {lora} is a file path" in r.stderr


def test_a_comfyui_name_is_not_warned_about(tmp_path):
    for name in ("sarah_v1.safetensors", "kohyawan/character/wan2.2_character_sarah_v1_20261128.safetensors"):
        r = kohyawan("comfy", "workflow", "--lora", name, "--out", "wf.json", cwd=tmp_path)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    # a path inside a ComfyUI folder: the warning gives the name ComfyUI lists
    inside = tmp_path / "ComfyUI" / "models" / "loras" / "kohyawan" / "x.safetensors"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"{}")
    r = kohyawan("comfy", "workflow", "--lora", inside, "--out", "wf.json", cwd=tmp_path)
    assert "inside a ComfyUI folder it is kohyawan/x.safetensors" in r.stderr


def test_out_in_a_missing_folder_is_refused(tmp_path):
    missing = tmp_path / "nonexist"
    r = kohyawan("comfy", "workflow", "--lora", "a.safetensors", "--out", missing / "wf.json", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == f"error: --out {missing / 'wf.json'}: the folder {missing} does not exist\n"
    assert not missing.exists()
    # an output folder is made, with its parents, as dataset prepare's --out is
    (tmp_path / "p.txt").write_text("a prompt\n")
    r = kohyawan("comfy", "grid", "--lora", "a.safetensors", "--prompts", "p.txt", "--out", "grids/g1", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "grids" / "g1" / "grid.json").is_file()
