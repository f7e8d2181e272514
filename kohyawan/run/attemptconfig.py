"""An attempt's training config: the rendered TOML with this attempt's values (``steps.attempt_overrides``:
output name, remaining steps, resume point, LR continuation) in a last table the trainer flattens over
the earlier ones. See docs/architecture.md ("A run").
"""

from __future__ import annotations

import re
from typing import Any

from kohyawan.config.tomlfmt import toml_value

from kohyawan.files import toml

_EPOCHS_LINE = re.compile(r"^\s*max_train_epochs\s*=.*$\n?", re.M)


def attempt_config(text: str, overrides: dict[str, Any]) -> str:
    """The rendered training TOML with this attempt's settings: ``max_train_epochs`` removed (it would
    override ``max_train_steps``) and a last table the trainer flattens over the earlier ones."""
    text = _EPOCHS_LINE.sub("", text)
    for key in overrides:  # one value per key: the trainer would take the later one, a checker flags both
        text = re.sub(rf"(?m)^{re.escape(key)} = .*\n", "", text)
    lines = [text.rstrip("\n"), "", "# kohyawan: this attempt's output name, remaining steps, resume point and "
             "LR continuation", "[kohyawan_attempt]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in overrides.items()]
    out = "\n".join(lines) + "\n"
    parsed = toml.loads(out)
    flat = {}
    for body in parsed.values():
        if isinstance(body, dict):
            flat.update(body)
    assert all(flat[k] == v for k, v in overrides.items()) and "max_train_epochs" not in flat
    return out
