import json

import pytest

from kohyawan.comfy.grid import columns, parse_strengths, plan_grid, read_prompts, version_label, write_grid
from kohyawan.comfy.workflow import loras_in
from kohyawan.errors import BadInput


def test_grid_composition_rows_columns_and_seeds():
    m = plan_grid(["sarah_v2.safetensors"], [0.6, 0.8, 1.0], ["a fox", "a cat"], compare=["sarah_v1.safetensors"],
                  include_base=True, seed=100, frames=17)
    assert [c["label"] for c in m["columns"]] == [
        "base model (no LoRA)", "sarah_v2 @ 0.60", "sarah_v2 @ 0.80", "sarah_v2 @ 1.00",
        "sarah_v1 @ 0.60", "sarah_v1 @ 0.80", "sarah_v1 @ 1.00"]
    assert m["settings"] == {"width": 640, "height": 640, "frames": 17, "steps": 20, "split_step": 10, "cfg": 3.5,
                             "shift": 8.0, "fps": 16.0}
    cells = m["cells"]
    assert len(cells) == 2 * 7
    assert len({c["id"] for c in cells}) == len(cells)
    for cell in cells:
        graph = cell["workflow_graph"]
        chains = loras_in(graph)
        sampler = next(n for n in graph.values() if n["class_type"] == "KSamplerAdvanced")
        assert sampler["inputs"]["noise_seed"] == cell["seed"] == 100 + cell["prompt_index"] - 1
        assert graph["2"]["inputs"]["text"] == ["a fox", "a cat"][cell["prompt_index"] - 1]
        if cell["role"] == "base":
            assert chains == {"high": [], "low": []}
        else:
            name = "sarah_v2.safetensors" if cell["role"] == "lora" else "sarah_v1.safetensors"
            assert chains == {"high": [(name, cell["strength"])], "low": [(name, cell["strength"])]}
        save = next(n for n in graph.values() if n["class_type"] == "SaveVideo")
        assert save["inputs"]["filename_prefix"].endswith("/" + cell["id"])


def test_expert_pair_is_one_version_and_goes_to_its_experts():
    names = ["wan2.2_character_sarah_high_v2_20260101.safetensors", "wan2.2_character_sarah_low_v2_20260101.safetensors"]
    assert version_label(names) == "wan2.2_character_sarah_high|low_v2_20260101"
    m = plan_grid(names, [0.8], ["x"])
    (cell,) = m["cells"]
    assert cell["loras_high"] == [[names[0], 0.8]] and cell["loras_low"] == [[names[1], 0.8]]


def test_grid_input_errors(tmp_path):
    with pytest.raises(BadInput, match="repeats"):
        parse_strengths("0.8,0.8")
    with pytest.raises(BadInput, match="numbers separated by commas"):
        parse_strengths("0.8;1")
    assert parse_strengths(" 0.6, 1 ") == [0.6, 1.0]
    with pytest.raises(BadInput, match="no :STRENGTH"):
        columns(["a.safetensors:0.5"], [1.0])
    empty = tmp_path / "p.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(BadInput, match="has no prompts"):
        read_prompts(empty)
    with pytest.raises(BadInput, match="cannot read prompts file"):
        read_prompts(tmp_path / "missing.txt")
    bad = tmp_path / "p.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(BadInput, match="JSON list of strings"):
        read_prompts(bad)


def test_read_prompts_text_and_json(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("  a fox  \n# skip\n\nünïcode \"quoted\"\n", encoding="utf-8")
    assert read_prompts(txt) == ["a fox", 'ünïcode "quoted"']
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["one", " ", "two\nlines"]))
    assert read_prompts(js) == ["one", "two\nlines"]


def test_write_grid_files_and_manifest(tmp_path):
    m = plan_grid(["s.safetensors"], [0.6, 1.0], ["a", "b"], include_base=True)
    out = tmp_path / "grid $(x) 'q'"
    write_grid(out, m)
    manifest = json.loads((out / "grid.json").read_text())
    assert manifest["version"] == 1
    assert [c["status"] for c in manifest["cells"]] == ["planned"] * 6
    assert "workflow_graph" not in manifest["cells"][0]
    for cell in manifest["cells"]:
        assert json.loads((out / cell["workflow"]).read_text()) == next(
            c["workflow_graph"] for c in m["cells"] if c["id"] == cell["id"])
    assert not list(out.rglob("*.tmp"))


def test_first_frame_of_image_webp_and_video(tmp_path):
    import subprocess

    from PIL import Image

    from comfy_fake_server import ffmpeg_path
    from kohyawan.comfy.sheet import first_frame

    frames = [Image.new("RGB", (40, 30), c) for c in ((250, 10, 10), (10, 250, 10))]
    webp = tmp_path / "anim out.webp"
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    got = Image.open(first_frame(webp, tmp_path / "a.png"))
    assert got.size == (40, 30) and got.getpixel((5, 5)) == (250, 10, 10)

    video = tmp_path / "-odd name $(x).mp4"
    subprocess.run([ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", "color=c=0x2040f0:s=32x32:d=0.2", "-pix_fmt",
                    "yuv420p", f"file:{video}"], check=True)
    got = Image.open(first_frame(video, tmp_path / "v.png")).convert("RGB")
    assert got.size == (32, 32) and all(abs(a - b) < 12 for a, b in zip(got.getpixel((16, 16)), (0x20, 0x40, 0xF0)))

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(BadInput, match="ffmpeg could not read a frame from broken.mp4"):
        first_frame(broken, tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()
