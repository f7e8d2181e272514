"""One validation for every command that takes plan options (issue 15, item 6): what `config render` refuses,
`config show`, `estimate`, `run` and `sweep` refuse too, with the same one line and exit 2."""

import subprocess

import pytest

from conftest import make_dataset


def _cli(argv, *args, cwd):
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _error_line(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("setting", ["blocks_to_swap=50", "blocks_to_swap=-3", "sage_attn=true",
                                     "fp8_scaled=true", "optimizer_type=''"])
def test_every_plan_command_refuses_what_config_render_refuses(kohyawan_argv, tmp_path, setting):
    data = make_dataset(tmp_path / "data", images=3)
    plan = ["--profile", "character", "--dataset", str(data), "--set", setting]
    render = _error_line(_cli(kohyawan_argv, "config", "render", *plan, "--out", str(tmp_path / "cfg"), cwd=tmp_path))
    assert not (tmp_path / "cfg").exists()
    for command in (["config", "show"], ["estimate", "--vram", "24"],
                    ["run", "--rehearse", "--runs-dir", str(tmp_path / "runs"), "--name", "x"],
                    ["sweep", "--variants", "conservative,standard", "--rehearse", "--runs-dir", str(tmp_path / "runs")]):
        assert _error_line(_cli(kohyawan_argv, *command, *plan, cwd=tmp_path)).endswith(render.split(": ", 1)[1])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", [("--vram", "-5"), ("--vram", "0"), ("--ram", "-1"), ("--margin", "-1"),
                                    ("--steps", "0")])
def test_estimate_refuses_impossible_sizes(kohyawan_argv, tmp_path, option):
    r = _cli(kohyawan_argv, "estimate", "--profile", "character", *option, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"Invalid value for '{option[0]}'" in r.stderr


def test_run_refuses_a_non_positive_interval(kohyawan_argv, tmp_path):
    r = _cli(kohyawan_argv, "runs", "resume", "x", "--interval", "-1", cwd=tmp_path)
    assert r.returncode == 2 and "Invalid value for '--interval'" in r.stderr
