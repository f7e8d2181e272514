"""Reading TOML on every Python kohyawan supports: the standard library's ``tomllib`` from 3.11, ``tomli``
(the same parser and API, an install requirement on 3.10) before. The choice is made here, once.
Design: docs/architecture.md.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib as _parser
else:  # pragma: no cover - exercised by the Python 3.10 run in .ci/run
    import tomli as _parser

loads = _parser.loads
load = _parser.load
TOMLDecodeError = _parser.TOMLDecodeError
