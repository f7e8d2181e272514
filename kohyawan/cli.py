"""The ``kohyawan`` command: a thin skin over the library.

Sub-commands live in ``kohyawan/commands/`` and are imported only when invoked, so ``kohyawan --help``
and every command that does not touch tensors start without importing torch. This module is the only
place where library errors become exit codes (see ``errors``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from kohyawan import __version__
from kohyawan.errors import KohyawanError

# command name -> "module:attribute" (a click command or group)
COMMANDS: dict[str, str] = {
    "config": "kohyawan.commands.config:config",
    "models": "kohyawan.commands.models:models",
    "dataset": "kohyawan.commands.dataset:dataset",
    "run": "kohyawan.commands.run:run",
    "runs": "kohyawan.commands.run:runs",
    "doctor": "kohyawan.commands.doctor:doctor",
    "estimate": "kohyawan.commands.estimate:estimate",
    "calibrate": "kohyawan.commands.calibrate:calibrate",
    "checkpoints": "kohyawan.commands.lora:checkpoints",
    "lora": "kohyawan.commands.lora:lora",
    "export": "kohyawan.commands.registry:export",
    "registry": "kohyawan.commands.registry:registry",
    "comfy": "kohyawan.commands.comfy:comfy",
    "sweep": "kohyawan.commands.batch:sweep",
    "batch": "kohyawan.commands.batch:batch",
    "ui": "kohyawan.commands.ui:ui",
    "cache": "kohyawan.commands.cache:cache",
}


def _available() -> dict[str, str]:
    """Commands whose module exists in this build (keeps --help honest while areas are built)."""
    found = {}
    for name, target in COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            found[name] = target
    return found


class KohyawanGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_available())

    def get_command(self, ctx, name):
        target = _available().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KohyawanError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=KohyawanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kohyawan")
def cli():
    """Train WAN 2.2 video LoRAs with musubi-tuner, unattended.

    \b
    Example:
      kohyawan config render --profile character --dataset ./data --out ./cfg
    """


def main() -> None:
    cli.main(prog_name="kohyawan")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
