import difflib
import json
import os
from pathlib import Path

import pytest

from kohyawan.comfy.strengths import LoraRef, default_strength, expert_of_name, guide_range, parse_lora, stacks
from kohyawan.comfy.workflow import DEFAULT_MODELS, build_workflow, dumps, links, loras_in
from kohyawan.errors import BadInput

GOLDEN = Path(__file__).parent / "golden" / "comfy"
REGEN = "KOHYAWAN_REGEN_GOLDEN"

CASES = {
    "t2v_two_loras.json": lambda: build_workflow(
        "t2v-A14B", loras_high=[("sarah_v1.safetensors", 0.8), ("film grain.safetensors", 0.8)],
        loras_low=[("sarah_v1.safetensors", 0.8), ("film grain.safetensors", 0.8)],
        prompt="sarah walks on a beach at dusk", negative="blurry", width=832, height=480, frames=49,
        steps=20, cfg=3.5, shift=8.0, seed=1234, fps=16, output_prefix="kohyawan/test"),
    "i2v_pair_webp.json": lambda: build_workflow(
        "i2v-A14B", loras_high=[("chars/sarah_high_v2.safetensors", 1.0)],
        loras_low=[("chars/sarah_low_v2.safetensors", 1.0)], prompt="she turns and smiles", image="kohyawan/start.png",
        frames=33, steps=8, split_step=3, seed=7, output="webp"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_workflow_matches_golden(name):
    text = dumps(CASES[name]())
    path = GOLDEN / name
    if os.environ.get(REGEN):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))
        pytest.fail(f"workflow differs from {path}; if the change is intended, regenerate with "
                    f"{REGEN}=1 pytest tests/test_comfy_workflow.py\n{diff}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_invariants(name):
    wf = CASES[name]()
    assert dumps(wf) == dumps(CASES[name]())                       # same arguments, same bytes
    assert list(wf) == [str(i) for i in range(1, len(wf) + 1)]     # ids are 1..n in order
    for node_id, _, source, slot in links(wf):
        assert source in wf, f"node {node_id} links to missing node {source}"
        assert int(source) < int(node_id), "links point backwards (build order is topological)"
        assert slot >= 0
    samplers = [n for n in wf.values() if n["class_type"] == "KSamplerAdvanced"]
    high, low = samplers
    assert (high["inputs"]["add_noise"], high["inputs"]["return_with_leftover_noise"]) == ("enable", "enable")
    assert (low["inputs"]["add_noise"], low["inputs"]["return_with_leftover_noise"]) == ("disable", "disable")
    assert high["inputs"]["start_at_step"] == 0
    assert high["inputs"]["end_at_step"] == low["inputs"]["start_at_step"]
    assert 0 < low["inputs"]["start_at_step"] < low["inputs"]["steps"] == high["inputs"]["steps"]
    assert low["inputs"]["end_at_step"] >= low["inputs"]["steps"]
    assert low["inputs"]["latent_image"][0] in wf and wf[low["inputs"]["latent_image"][0]] is high
    assert high["inputs"]["noise_seed"] == low["inputs"]["noise_seed"]
    lengths = [n["inputs"]["length"] for n in wf.values() if "length" in n["inputs"]]
    assert lengths and all((x - 1) % 4 == 0 for x in lengths)
    assert sum(n["class_type"] in ("SaveVideo", "SaveAnimatedWEBP") for n in wf.values()) == 1
    clip = next(n for n in wf.values() if n["class_type"] == "CLIPLoader")
    assert clip["inputs"]["type"] == "wan"
    # each expert's sampler sees its own UNETLoader through the LoRA chain and ModelSamplingSD3
    for sampler, expected in ((high, "high_noise"), (low, "low_noise")):
        node = wf[sampler["inputs"]["model"][0]]
        assert node["class_type"] == "ModelSamplingSD3"
        while node["class_type"] != "UNETLoader":
            node = wf[node["inputs"]["model"][0]]
        assert expected in node["inputs"]["unet_name"]


def test_default_sampling_matches_comfyui_templates():
    wf = build_workflow(prompt="x")
    high = next(n for n in wf.values() if n["class_type"] == "KSamplerAdvanced")
    assert (high["inputs"]["steps"], high["inputs"]["end_at_step"], high["inputs"]["cfg"]) == (20, 10, 3.5)
    assert (high["inputs"]["sampler_name"], high["inputs"]["scheduler"]) == ("euler", "simple")
    assert [n["inputs"]["shift"] for n in wf.values() if n["class_type"] == "ModelSamplingSD3"] == [8.0, 8.0]
    latent = next(n for n in wf.values() if n["class_type"] == "EmptyHunyuanLatentVideo")["inputs"]
    assert (latent["width"], latent["height"], latent["length"]) == (640, 640, 81)
    assert next(n for n in wf.values() if n["class_type"] == "CreateVideo")["inputs"]["fps"] == 16.0
    names = {n["inputs"].get("unet_name") for n in wf.values()} - {None}
    assert names == {DEFAULT_MODELS["t2v-A14B"].unet_high, DEFAULT_MODELS["t2v-A14B"].unet_low}


def test_loras_traced_back_per_expert():
    wf = build_workflow(loras_high=[("a.safetensors", 0.7), ("b.safetensors", 0.6)], loras_low=[("c.safetensors", 1.0)])
    assert loras_in(wf) == {"high": [("a.safetensors", 0.7), ("b.safetensors", 0.6)], "low": [("c.safetensors", 1.0)]}
    assert loras_in(build_workflow()) == {"high": [], "low": []}


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 80}, r"4n\+1"),
    ({"width": 650}, "multiple of 16"),
    ({"steps": 20, "split_step": 20}, "between 1 and 19"),
    ({"steps": 20, "split_step": 0}, "between 1 and 19"),
    ({"seed": -1}, "seed"),
    ({"cfg": 101.0}, "cfg"),
    ({"task": "t2v-14B"}, "unknown task"),
    ({"task": "i2v-A14B"}, "needs a start image"),
    ({"image": "x.png"}, "only used by i2v"),
    ({"output": "gif"}, "unknown output"),
])
def test_bad_arguments_are_bad_input(kwargs, message):
    with pytest.raises(BadInput, match=message):
        build_workflow(**kwargs)


def test_default_strengths_follow_the_guide_ranges():
    for size in range(1, 7):
        low, high = guide_range(size)
        assert low <= default_strength(size) <= high
    assert [default_strength(n) for n in (1, 2, 3, 5)] == [1.0, 0.8, 0.7, 0.7]


def test_parse_lora():
    assert parse_lora("sarah.safetensors") == LoraRef("sarah.safetensors", None)
    assert parse_lora("sarah.safetensors:0.75") == LoraRef("sarah.safetensors", 0.75)
    assert parse_lora("dir/we:ird name.safetensors:-.5", "low") == LoraRef("dir/we:ird name.safetensors", -0.5, "low")
    assert parse_lora("odd:name.safetensors") == LoraRef("odd:name.safetensors", None)
    with pytest.raises(BadInput, match="no file name"):
        parse_lora(":0.5")
    with pytest.raises(BadInput, match="-100..100"):
        parse_lora("a.safetensors:150")


def test_expert_pairs_map_by_name_and_stack_sizes_count_per_expert():
    assert expert_of_name("characters/acme/wan2.2_character_sarah_high_v2_20260101.safetensors") == "high"
    assert expert_of_name("wan2.2_character_sarah_low_v2_20260101.safetensors") == "low"
    assert expert_of_name("sarah_v2.safetensors") == "both"
    assert expert_of_name("high_and_low.safetensors") == "both"
    refs = [LoraRef("s_high_v2.safetensors"), LoraRef("s_low_v2.safetensors"), LoraRef("style.safetensors"),
            LoraRef("x.safetensors", 0.3, "high")]
    high, low = stacks(refs)
    assert high == [("s_high_v2.safetensors", 0.7), ("style.safetensors", 0.7), ("x.safetensors", 0.3)]
    assert low == [("s_low_v2.safetensors", 0.8), ("style.safetensors", 0.8)]
    # explicit expert wins over the name; auto mapping can be turned off
    assert stacks([LoraRef("s_high_v2.safetensors", None, "low")]) == ([], [("s_high_v2.safetensors", 1.0)])
    assert stacks([LoraRef("s_high_v2.safetensors")], auto_expert=False)[1] == [("s_high_v2.safetensors", 1.0)]


def test_workflow_text_is_valid_json_with_unicode():
    wf = build_workflow(prompt='日本語 "quotes" $(rm -rf /)\nnew line')
    assert json.loads(dumps(wf))["2"]["inputs"]["text"] == 'sarah'.replace("sarah", '日本語 "quotes" $(rm -rf /)\nnew line')
