"""The registry: models by kind and client, one model's versions (status, files with sizes and hashes,
hyperparameter and dataset changes), its rendered training_notes.md, and promote / deprecate / rollback.

Reading uses ``registry.store`` and ``registry.actions.list_models`` (``registry list``/``show``); every
change goes through ``registry.actions`` (``registry promote/deprecate/rollback``): the same roles.toml check
for the same acting user (``$KOHYAWAN_USER``, else the login name of the user who started the server) and
the same lock as the CLI.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kohyawan.ui.app import render
from kohyawan.errors import BadInput
from kohyawan.ui.config import Conflict, check_name

_MARKDOWN = None

def markdown_html(text: str) -> str:
    """CommonMark with tables, raw HTML disabled (markdown-it-py, which rich already brings)."""
    global _MARKDOWN
    if _MARKDOWN is None:
        from markdown_it import MarkdownIt

        _MARKDOWN = MarkdownIt("js-default")   # html=False: a note cannot inject markup
    return _MARKDOWN.render(text)

def _registry(request: Request):
    from kohyawan.registry import store

    root = request.app.state.cfg.registry
    if root is None:
        raise Conflict("no registry configured: start kohyawan ui with --registry DIR")
    return store.Registry.open(root)

def _model_args(request: Request) -> tuple[str, str, str]:
    p = request.path_params
    return check_name(p["kind"], "kind"), check_name(p["client"], "client"), check_name(p["name"], "model")

def registry_page(request: Request) -> Response:
    from kohyawan.registry import actions, roles

    cfg = request.app.state.cfg
    if cfg.registry is None:
        return render(request, "registry.html", nav="registry", groups=None, roles=None)
    reg = _registry(request)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in actions.list_models(reg.read_index()):
        groups.setdefault((row["kind"], row["client"]), []).append(row)
    from kohyawan.registry.store import current_user

    table = roles.load(reg.root)
    return render(request, "registry.html", nav="registry", groups=groups, root=reg.root, roles=table,
                  my_roles=None if table is None else roles.roles_of(table, current_user()))

def version_changes(versions: list[dict]) -> dict[int, list[tuple[str, str, str, str]]]:
    """Per version: (what, key, before, after) against the previous version (as in training_notes.md)."""
    from kohyawan.registry import notes

    ordered = sorted(versions, key=lambda v: v["version"])
    return {v["version"]: notes.changes(prev, v) if prev is not None else []
            for prev, v in zip([None] + ordered[:-1], ordered)}

def _model_context(request: Request) -> dict:
    from kohyawan.registry import roles, store, versions

    kind, client, name = _model_args(request)
    reg = _registry(request)
    m = store.find_model(reg.read_index(), name, client=client, kind=kind)
    notes_path = reg.notes_path(m)
    notes_text = notes_path.read_text(encoding="utf-8") if notes_path.is_file() else ""
    table = roles.load(reg.root)
    user = store.current_user()
    return {"model": m, "key": f"{kind}/{client}/{name}", "versions": list(reversed(m["versions"])),
            "changes": version_changes(m["versions"]), "notes_html": markdown_html(notes_text),
            "notes_path": notes_path, "rollback_to": versions.rollback_target(m),
            "current": versions.current_of(m), "roles": table,
            "my_roles": None if table is None else roles.roles_of(table, user)}

def model_page(request: Request) -> Response:
    return render(request, "model.html", nav="registry", **_model_context(request))

async def _fields(request: Request) -> dict[str, str]:
    from kohyawan.ui.pages_runs import form

    return await form(request)

def _change(request: Request, fields: dict[str, str]) -> Response:
    from kohyawan.registry import actions

    kind, client, name = _model_args(request)
    action = fields.get("action", "")
    root = request.app.state.cfg.registry
    if root is None:
        raise Conflict("no registry configured: start kohyawan ui with --registry DIR")
    if action == "rollback":
        result = actions.rollback(root, name, reason=fields.get("reason", ""), client=client, kind=kind)
    elif action in actions.STATUS_ACTIONS:
        result = actions.change_status(root, action, name, fields.get("version", ""),
                                       reason=fields.get("reason") or None, client=client, kind=kind,
                                       force=fields.get("force") == "1")  # the page's "promote anyway" box
    else:
        raise BadInput(f"unknown action {action!r}: promote, deprecate or rollback")
    ctx = _model_context(request)
    return render(request, "_model_body.html", done=f"{actions.status_line(result)} (by {result['user']})", **ctx)

async def model_action(request: Request) -> Response:
    fields = await _fields(request)
    return await run_in_threadpool(_change, request, fields)

ROUTES = [
    Route("/registry", registry_page),
    Route("/registry/{kind}/{client}/{name}", model_page),
    Route("/registry/{kind}/{client}/{name}/action", model_action, methods=["POST"]),
]
