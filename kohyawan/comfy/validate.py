"""Check an API-format workflow against a server's ``GET /object_info`` (pure).

ComfyUI's ``/object_info`` describes each input either the classic way (``[[choice, ...], {...}]`` for a
dropdown, ``["INT", {"min": .., "max": ..}]`` for a number, ``["MODEL"]`` for a link) or, for nodes written
against the newer node API, with dropdowns as ``["COMBO", {"options": [...]}]``. Both are handled. The checks
mirror what ``POST /prompt`` validates, so a workflow that passes here is accepted there, and a problem is
reported before anything is queued, with the node, the input and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# Inputs a node checks itself (a VALIDATE_INPUTS method, which /object_info does not show): ComfyUI then
# skips its list check. LoadImage lists only the top of the input folder but accepts "sub/name.png".
SELF_VALIDATED = {("LoadImage", "image")}


@dataclass(frozen=True)
class Problem:
    node: str
    class_type: str
    input: str | None
    message: str

    def __str__(self) -> str:
        where = f"node {self.node} ({self.class_type})"
        return f"{where}: {self.input}: {self.message}" if self.input else f"{where}: {self.message}"


def _spec_parts(spec: Any) -> tuple[Any, dict]:
    if isinstance(spec, (list, tuple)) and spec:
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return spec[0], options
    return spec, {}


def _choices(kind: Any, options: dict) -> list | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(options.get("options", []))
    return None


def _show(choices: list) -> str:
    if len(choices) > 8:
        return f"{len(choices)} choices on the server, e.g. {', '.join(map(repr, choices[:3]))}"
    return "allowed: " + (", ".join(map(repr, choices)) if choices else "(none: the server has no such files)")


def _check_value(name: str, value: Any, kind: Any, options: dict) -> str | None:
    choices = _choices(kind, options)
    if choices is not None:
        if value not in choices:
            return f"{value!r} is not available ({_show(choices)})"
        return None
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not an integer"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{value!r} is not a number"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    else:
        return f"expects a link from a {kind} output, got the value {value!r}"
    if "min" in options and value < options["min"]:
        return f"{value} is below the minimum {options['min']}"
    if "max" in options and value > options["max"]:
        return f"{value} is above the maximum {options['max']}"
    return None


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def check_workflow(workflow: dict, object_info: dict) -> list[Problem]:
    """Every problem found, in node order; an empty list means the server should accept the workflow."""
    problems: list[Problem] = []
    for node_id, node in workflow.items():
        class_type = node.get("class_type")
        if class_type not in object_info:
            problems.append(Problem(node_id, str(class_type), None,
                                    "node type is not on the server (a missing custom node or an older ComfyUI)"))
            continue
        declared = object_info[class_type].get("input", {})
        required = declared.get("required", {}) or {}
        optional = declared.get("optional", {}) or {}
        inputs = node.get("inputs", {})
        for name in required:
            if name not in inputs:
                problems.append(Problem(node_id, class_type, name, "required input is missing"))
        for name, value in inputs.items():
            spec = required.get(name, optional.get(name))
            if spec is None:
                problems.append(Problem(node_id, class_type, name, "is not an input of this node on the server"))
                continue
            kind, options = _spec_parts(spec)
            if _is_link(value):
                message = _check_link(workflow, object_info, value, kind)
            elif (class_type, name) in SELF_VALIDATED:
                message = None if isinstance(value, str) and value else f"{value!r} is not a file name"
            else:
                message = _check_value(name, value, kind, options)
            if message:
                problems.append(Problem(node_id, class_type, name, message))
    return problems


def _check_link(workflow: dict, object_info: dict, value: list, kind: Any) -> str | None:
    source_id, slot = value
    if source_id not in workflow:
        return f"links to node {source_id}, which is not in the workflow"
    source_type = workflow[source_id].get("class_type")
    if source_type not in object_info:
        return None  # reported on the source node itself
    outputs = object_info[source_type].get("output", [])
    if not 0 <= slot < len(outputs):
        return f"links to output {slot} of node {source_id} ({source_type}), which has {len(outputs)} outputs"
    produced = outputs[slot]
    expected = "COMBO" if isinstance(kind, list) else kind
    if "*" not in (produced, expected) and produced != expected:
        return f"links a {produced} output of node {source_id} ({source_type}) to a {expected} input"
    return None


def describe(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]
