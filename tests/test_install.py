"""The installed package carries its bundled profiles, templates and option tables."""

from kohyawan.config import resources
from kohyawan.trainer import musubi


def test_bundled_folders_are_found():
    assert (resources.profiles_dir() / "base.toml").is_file()
    assert (resources.templates_dir() / "train.toml.j2").is_file()
    assert len(musubi.options()) == 130
