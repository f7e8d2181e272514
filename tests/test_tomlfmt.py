import pytest

from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10
from kohyawan.config.tomlfmt import toml_key, toml_value


@pytest.mark.parametrize("value", [
    "plain", "with space", "quote\"double", "quote'single", "back\\slash", "$(touch x)", "tab\tnew\nline",
    "ünïcødé 名前", "\x01control\x7f", "", True, False, 0, -3, 2 ** 40, 1.5e-4, 8e-05, 12.0, 1e300,
    [17, 21], [], ["a", "b\\c"], [1.0, 2.5],
])
def test_values_read_back_exactly(value):
    parsed = tomllib.loads(f"k = {toml_value(value)}")["k"]
    assert parsed == value and type(parsed) is type(value)


def test_non_finite_and_unknown_types_are_refused():
    with pytest.raises(ValueError):
        toml_value(float("nan"))
    with pytest.raises(TypeError):
        toml_value({"a": 1})


def test_keys_are_bare_when_possible():
    assert toml_key("network_dim") == "network_dim"
    assert toml_key("t2v-A14B") == "t2v-A14B"
    assert tomllib.loads(f"{toml_key('a.b c')} = 1") == {"a.b c": 1}
