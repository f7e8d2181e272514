import subprocess
import sys

import click
from click.testing import CliRunner

from kohyawan.cli import cli


def _command_paths(cmd, path=()):
    yield path
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(None):
            yield from _command_paths(cmd.get_command(None, name), path + (name,))


def test_version_and_help():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("kohyawan, version ")
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output


def test_importing_cli_does_not_import_torch():
    code = "import sys, kohyawan.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    paths = list(_command_paths(cli))
    assert len(paths) >= 1
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, f"'kohyawan {' '.join(path)} --help' shows no example"


def test_models_fabricate_writes_a_checkable_set(tmp_path):
    from kohyawan.modelfiles.identify import identify

    result = CliRunner().invoke(cli, ["models", "fabricate", "--task", "i2v-A14B", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "dit_high_noise  " in result.output and "(28.6 GB, sparse)" in result.output
    files = {p.name: p for p in tmp_path.iterdir()}
    assert identify(files["wan2.2_i2v_high_noise_14B_fp16.safetensors"]).variant == "i2v"
    assert sum(p.stat().st_blocks for p in files.values()) * 512 < 50e6  # sparse: no real disk used
