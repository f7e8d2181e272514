"""``kohyawan ui``: a thin skin over ``kohyawan.ui`` (which needs the optional ``ui`` extra)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click

from kohyawan.errors import BadInput, ConfigError

_DIR = click.Path(path_type=Path, file_okay=False, exists=True)
INSTALL = "pip install 'kohyawan[ui]'"


@click.command()
@click.option("--runs-dir", "runs_dirs", type=_DIR, multiple=True,
              help="A folder of runs (repeatable; default: the project's runs_dir, else ./runs).")
@click.option("--registry", "registry_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Registry folder (else [kohyawan] registry in ./kohyawan.toml, else $KOHYAWAN_REGISTRY).")
@click.option("--batch", "batch_dirs", type=_DIR, multiple=True, help="A batch folder to show (repeatable).")
@click.option("--grids", "grid_dirs", type=_DIR, multiple=True,
              help="A folder holding comfy grid outputs (grid.json), searched 3 levels deep (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any other than 127.0.0.1/localhost/::1 requires a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--token", envvar="KOHYAWAN_UI_TOKEN", default=None,
              help="Access token every request must carry (default: none on 127.0.0.1, a generated one elsewhere; "
                   "also $KOHYAWAN_UI_TOKEN).")
def ui(runs_dirs, registry_dir, batch_dirs, grid_dirs, host, port, token):
    """A local web dashboard: runs (live), checkpoints, the registry, test grids and sweeps.

    It reads the files kohyawan writes (no database) through the same code as the CLI. Stop, resume,
    export, promote, deprecate and rollback from the page do what the commands do, with the same locks and
    roles.toml checks, as the user who started the server ($KOHYAWAN_USER, else the login name). It binds
    127.0.0.1; to serve other machines give --host (a token is then required and printed). Everything the
    page loads is shipped in the package: it works offline.

    Needs the web extra: pip install 'kohyawan[ui]'.

    \b
    Example:
      kohyawan ui --runs-dir ./runs --registry /mnt/team/loras --grids ./grids
      kohyawan ui --host 0.0.0.0 --port 8765 --token "$(openssl rand -hex 16)"
    """
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise BadInput(f"kohyawan ui needs {' and '.join(missing)}: {INSTALL}")
    from kohyawan.commands.run import _runs_dir
    from kohyawan.registry import store
    from kohyawan.ui.config import UiConfig
    from kohyawan.ui.server import serve

    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,}", token):
        # it travels in the printed URL and a cookie as it is: only characters neither needs to escape
        raise BadInput("--token: use at least 8 characters, each a letter, a digit or one of . _ ~ -")
    if registry_dir is None:
        try:
            registry_dir = store.locate(None)
        except ConfigError:    # a kohyawan.toml that does not parse is an error, not "no registry"
            raise
        except BadInput:       # none configured: the registry page says how to give one
            registry_dir = None
    cfg = UiConfig(runs_dirs=tuple(runs_dirs) or (_runs_dir(None),), registry=registry_dir,
                   batch_dirs=tuple(batch_dirs), grid_dirs=tuple(grid_dirs), host=host, port=port, token=token)
    try:
        serve(cfg)
    except KeyboardInterrupt:
        pass
