import os
import sys

import pytest


@pytest.fixture
def kohyawan_argv():
    """The kohyawan CLI as a real process (the same interpreter that runs the tests)."""
    return [sys.executable, "-m", "kohyawan"]


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    # Never read or write the developer's own config, profiles or registry.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("KOHYAWAN_REGISTRY", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    yield
