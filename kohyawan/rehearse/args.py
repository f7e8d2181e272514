"""musubi-tuner's argument parser rebuilt from kohyawan's option tables, with its config-file rule.

``--config_file X.toml`` works exactly like musubi's ``read_config_from_file``: ``.toml`` is appended
when missing, a missing file logs ``X.toml not found.`` and exits 1, every section is flattened into
one namespace (section names ignored), values are taken as they are (no type or choice check), unknown
keys are kept silently, and options on the command line override the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kohyawan.files import toml

_TABLES = Path(__file__).resolve().parent.parent / "trainer" / "options"


def _int_or_float(value: str):
    # musubi: "0.1" is a ratio of the total steps, "100" a step count
    return float(value) if "." in value or "e" in value.lower() else int(value)


_TYPES = {"str": str, "int": int, "float": float, "Path": Path, "_int_or_float": _int_or_float, None: None}


def build_parser(script: str) -> argparse.ArgumentParser:
    table = json.loads((_TABLES / f"{script}.json").read_text())
    parser = argparse.ArgumentParser(prog=f"{script}.py")
    for opt in table["options"]:
        kwargs = {"dest": opt["dest"], "default": opt["default"]}
        if opt["action"] in ("store_true", "store_false"):
            kwargs["action"] = opt["action"]
        else:
            if _TYPES.get(opt["type"]) is not None:
                kwargs["type"] = _TYPES[opt["type"]]
            if opt["nargs"] not in (None, 0):
                kwargs["nargs"] = opt["nargs"]
            if opt["choices"]:
                kwargs["choices"] = opt["choices"]
            if opt["required"]:
                kwargs["required"] = True
        parser.add_argument(opt["option"], **kwargs)
    return parser


def parse(script: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser(script)
    args = parser.parse_args(argv)
    return read_config_from_file(args, parser, argv)


def read_config_from_file(args, parser, argv=None):
    if not getattr(args, "config_file", None):
        return args
    path = args.config_file if args.config_file.endswith(".toml") else args.config_file + ".toml"
    log = "INFO:musubi_tuner.training.parser_common:"
    if not os.path.exists(path):
        print(f"{log}{path} not found.", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"{log}Loading settings from {path}...", file=sys.stderr, flush=True)
    with open(path, "rb") as f:
        config = toml.load(f)
    flat = {}
    for section, value in config.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[section] = value
    # argparse fills in a default only for attributes the namespace lacks: the file beats the
    # defaults, the command line beats the file.
    args = parser.parse_args(argv, namespace=argparse.Namespace(**flat))
    args.config_file = os.path.splitext(args.config_file)[0]
    return args
