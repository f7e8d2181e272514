"""The outputs that README.md and docs/*.md show as captured come from running their commands, so they cannot go
stale (issue 15, item 16).

A block marked ``<!-- captured: ID -->`` (the line before its fence) shows ``$ command`` lines, each followed by
what the command printed (stdout and stderr as they interleave, piped: 80 columns). BLOCKS says how each block
runs: its setup, its environment, and which lines the doc shows as ``...`` (``elide``: progress lines whose
number depends on timing; ``head``: only the first lines). The README's blocks run the README's quickstart
itself, line for line, in a fresh home folder (``~/kohyawan`` there is the checkout); the others run their own
``$`` lines in an empty folder ``~/wan-demo`` prepared by their setup. Outputs show that home as /home/ana.

A doc and a fresh run are compared after masking what differs from run to run (dates, times, hashes), and
without their ``...`` lines. ``KOHYAWAN_REGEN_DOCS=1 pytest tests/test_docs_output.py`` rewrites the blocks
from a fresh run instead: review the diff before committing it.

Left out on purpose: blocks that need a live ComfyUI (docs/comfy.md), a SLURM cluster or several GPUs
(docs/scale.md), raw media that only exist on the machine they were captured on (docs/dataset.md's example),
and the pages other engineers own and capture (docs/estimate.md, lora.md, registry.md, ui.md).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGEN = os.environ.get("KOHYAWAN_REGEN_DOCS") == "1"
SHOWN_HOME = "/home/ana"
FAST = {"KOHYAWAN_REHEARSE_STEP_S": "0.02"}
PROGRESS = r"\d\d:\d\d:\d\d "          # dataset prepare's plain progress lines (stderr, not a terminal)
STATUS = r"\[[\w-]+\]  "               # run --plain's status line, every --interval seconds

BLOCKS = {
    "quickstart": dict(doc="README.md", scenario="readme", elide=f"{PROGRESS}|{STATUS}"),
    "config-origin": dict(doc="README.md", scenario="readme", head=7),
    "run-example": dict(doc="docs/run.md", setup="examples", elide=f"{PROGRESS}|{STATUS}"),
    "run-ladder": dict(doc="docs/run.md", setup="four-pngs", elide=STATUS),
    "inspect-table": dict(doc="docs/models.md", setup="model-zoo"),
    "inspect-json": dict(doc="docs/models.md", setup="model-zoo"),
}

# what differs from run to run, and lines that depend on the machine (a GPU) rather than on kohyawan
MASKS = [(re.compile(r"\b20\d\d-?\d\d-?\d\d\b"), "<date>"), (re.compile(r"\b\d\d:\d\d(:\d\d)?\b"), "<time>"),
         (re.compile(r"\b[0-9a-f]{16,64}\b"), "<hash>")]
MACHINE_LINES = re.compile(r"^note: no NVIDIA GPU/NVML here")
MARKER = re.compile(r"^<!-- captured: ([\w-]+) -->$")


@dataclass
class Block:
    ident: str
    doc: Path
    start: int            # first line inside the fence
    end: int              # the closing fence
    commands: list[str]   # as shown, continuation lines joined with "\n"
    text: str


def parse_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").split("\n")
    blocks = []
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        assert lines[i + 1] == "```", f"{doc}:{i + 2}: a captured block starts right after its marker"
        end = lines.index("```", i + 2)
        body = lines[i + 2:end]
        commands, current = [], None
        for text in body:
            if current is not None:
                current.append(text)
            elif text.startswith("$ "):
                current = [text[2:]]
            if current is not None and not text.endswith("\\"):
                commands.append("\n".join(current))
                current = None
        blocks.append(Block(match.group(1), doc, i + 2, end, commands, "\n".join(body)))
    return blocks


def readme_script() -> list[str]:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


# -- running ----------------------------------------------------------------------------------------------------

def _setup(kind: str | None, folder: Path) -> None:
    folder.mkdir(parents=True)
    if kind == "examples":
        shutil.copytree(ROOT / "examples", folder / "examples")
    elif kind == "four-pngs":
        from runtime_helpers import make_dataset

        make_dataset(folder / "data", n=4)
    elif kind == "model-zoo":
        from kohyawan.modelfiles import standins as s

        s.write_t5(folder / "models_t5_umt5-xxl-enc-bf16.safetensors")
        s.write_t5(folder / "umt5_xxl_fp16.safetensors", fmt="hf", dtype="fp16")
        s.write_dit(folder / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", variant="i2v", dtype="fp8_scaled")
        s.write_dit(folder / "wan2.2_t2v_high_noise_14B_fp16.safetensors", dtype="fp16")
        s.write_dit(folder / "wan2.2_t2v_low_noise_14B_fp16.safetensors", dtype="fp16")
        s.write_dit(folder / "wan2.2_ti2v_5B_fp16.safetensors", size="5B", dtype="fp16")
        s.write_vae(folder / "wan2.2_vae.safetensors", version="2.2")
        s.write_vae(folder / "wan_2.1_vae.safetensors")
        (folder / "notes.txt").write_text("which files go where\n")


def run_script(home: Path, script: list[str], cwd: Path, env: dict) -> list[tuple[str, int]]:
    """Run the lines in one bash, as a user types them; (output, exit status) per line."""
    bindir = home / ".bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "kohyawan"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kohyawan \"$@\"\n")
    wrapper.chmod(0o755)
    text = ["exec 2>&1", "__rc=0"]
    for i, line in enumerate(script):  # the markers keep $? as the previous line left it (`echo $?` is shown)
        text += [f"echo @@doc-cmd {i}; (exit $__rc)", line, "__rc=$?; echo \"@@doc-rc $__rc\""]
    full_env = {**os.environ, "HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1", "COLUMNS": "80", "NO_COLOR": "1", **FAST, **env}
    proc = subprocess.run(["bash", "-c", "\n".join(text)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=900)
    parts = re.split(r"^@@doc-cmd \d+\n", proc.stdout, flags=re.M)[1:]
    assert len(parts) == len(script), proc.stdout + proc.stderr
    results = []
    for part in parts:
        body, _, rc = part.rpartition("@@doc-rc ")
        results.append((body, int(rc.strip())))
    return results


_RUNS: dict[str, tuple[list[str], list[tuple[str, int]], Path]] = {}


def scenario(ident: str, tmp_path_factory) -> tuple[list[str], list[tuple[str, int]], Path]:
    """(script, results, home) of a block's scenario; the README's quickstart runs once for all its blocks."""
    spec = BLOCKS[ident]
    key = spec.get("scenario", ident)
    if key not in _RUNS:
        home = tmp_path_factory.mktemp("home")
        before = set(os.listdir(ROOT))
        if key == "readme":
            (home / "kohyawan").symlink_to(ROOT)
            script, cwd = readme_script(), home
        else:
            cwd = home / "wan-demo"
            _setup(spec.get("setup"), cwd)
            script = _block(ident).commands
        results = run_script(home, script, cwd, spec.get("env", {}))
        assert set(os.listdir(ROOT)) <= before, "a documented command wrote into the checkout"
        _RUNS[key] = (script, results, home)
    return _RUNS[key]


def _block(ident: str) -> Block:
    return next(b for b in parse_blocks(ROOT / BLOCKS[ident]["doc"]) if b.ident == ident)


# -- the block as a fresh run shows it ----------------------------------------------------------------------------

def shown_output(output: str, home: Path, spec: dict) -> list[str]:
    for real in {str(home), str(home.resolve())}:
        output = output.replace(real, SHOWN_HOME)
    lines = [line.rstrip() for line in output.rstrip("\n").split("\n")] if output.strip() else []
    if spec.get("head") is not None and len(lines) > spec["head"]:
        lines = lines[: spec["head"]] + ["..."]
    if spec.get("elide"):
        pattern, kept = re.compile(spec["elide"]), []
        for line in lines:
            if pattern.match(line):
                if not kept or kept[-1] != "...":
                    kept.append("...")
            else:
                kept.append(line)
        lines = kept
    return lines


def fresh_text(block: Block, tmp_path_factory) -> str:
    script, results, home = scenario(block.ident, tmp_path_factory)
    out = []
    for command in block.commands:
        assert command in script, f"{block.doc.name} [{block.ident}] shows `{command}`, which the scenario never runs"
        output, _rc = results[script.index(command)]
        out += [f"$ {command}"] + shown_output(output, home, BLOCKS[block.ident])
    return "\n".join(out)


def masked(text: str) -> list[str]:
    lines = []
    for line in text.split("\n"):
        if line == "..." or MACHINE_LINES.match(line):
            continue
        for pattern, token in MASKS:
            line = pattern.sub(token, line)
        lines.append(line.rstrip())
    return lines


def rewrite(block: Block, text: str) -> None:
    lines = block.doc.read_text(encoding="utf-8").split("\n")
    lines[block.start:block.end] = text.split("\n")
    block.doc.write_text("\n".join(lines), encoding="utf-8")


# -- tests --------------------------------------------------------------------------------------------------------

def test_every_captured_block_is_known_and_every_known_block_is_there():
    found = {b.ident: b.doc.relative_to(ROOT).as_posix()
             for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for b in parse_blocks(doc)}
    assert found == {ident: spec["doc"] for ident, spec in BLOCKS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("ident", list(BLOCKS))
def test_captured_block_matches_a_fresh_run(ident, tmp_path_factory):
    block = _block(ident)
    fresh = fresh_text(block, tmp_path_factory)
    if REGEN:
        rewrite(block, fresh)
        return
    if masked(block.text) != masked(fresh):
        diff = "\n".join(difflib.unified_diff(masked(block.text), masked(fresh), f"{block.doc.name} [{ident}]",
                                              "a fresh run", lineterm=""))
        pytest.fail(f"{diff}\n\nthe doc is stale: KOHYAWAN_REGEN_DOCS=1 pytest tests/test_docs_output.py "
                    "captures it again (review the diff)")


@pytest.mark.slow
def test_the_quickstart_runs_line_for_line(tmp_path_factory):
    script, results, home = scenario("quickstart", tmp_path_factory)
    for line, (output, rc) in zip(script, results):
        assert rc == 0, f"{line}\n{output}"
    outputs = {line.split()[1]: output for line, (output, _) in zip(script, results) if line.startswith("kohyawan ")}
    assert "REHEARSAL" in outputs["run"] and "succeeded" in outputs["run"]
    assert "exported character/demo/sarah v1" in outputs["export"]
    demo = home / "wan-demo"  # everything went into the empty folder (scenario() checks the checkout got nothing)
    assert sorted(p.name for p in demo.iterdir()) == ["cfg", "data", "models", "registry", "runs"]
    assert (demo / "cfg" / "sarah" / "commands.sh").is_file() and (demo / "data" / "sarah" / "report.json").is_file()
