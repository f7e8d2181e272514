"""Pure parts of the registry: names, status transitions, checkpoint choice, notes rendering."""

from datetime import date
from pathlib import Path

import pytest

from kohyawan.errors import BadInput
from kohyawan.registry import naming, notes, sources, versions


@pytest.mark.parametrize("bad", ["", " ", "../x", "..", "a/b", "/abs", "a\\b", "a_b", "sarah v2", "$(rm -rf ~)",
                                 "a\nb", "sära", "-lead", ".hidden", "x" * 65, "a'b", 'a"b'])
def test_hostile_names_are_refused_with_a_hint(bad):
    with pytest.raises(BadInput) as e:
        naming.check_slug(bad, "name")
    assert "\n" not in str(e.value)
    assert "name" in str(e.value)


@pytest.mark.parametrize("good", ["sarah", "Sarah-2", "brand-x", "a", "0day", "x" * 64])
def test_safe_names_pass(good):
    assert naming.check_slug(good, "client") == good


def test_file_names_follow_the_guide_and_pairs_sort_together():
    d = date(2026, 11, 28)
    assert naming.lora_file_name("character", "sarah", 3, d) == "wan2.2_character_sarah_v3_20261128.safetensors"
    hi = naming.lora_file_name("motion", "walk", 2, d, "high")
    lo = naming.lora_file_name("motion", "walk", 2, d, "low")
    assert (hi, lo) == ("wan2.2_motion_walk_high_v2_20261128.safetensors", "wan2.2_motion_walk_low_v2_20261128.safetensors")
    assert naming.model_folder("style", "brand-x") == "styles/brand-x"
    with pytest.raises(BadInput):
        naming.lora_file_name("style", "x", 1, d, "middle")


@pytest.mark.parametrize("text,n", [("v1", 1), ("3", 3), (" v12 ", 12)])
def test_parse_version(text, n):
    assert naming.parse_version(text) == n


@pytest.mark.parametrize("bad", ["v0", "x", "v-1", "1.5", "", "current"])
def test_bad_versions(bad):
    with pytest.raises(BadInput):
        naming.parse_version(bad)


def _model(n=3):
    m = {"kind": "character", "client": "default", "name": "sarah", "versions": [], "events": []}
    for i in range(n):
        m, _ = versions.add_version(m, {"files": []}, at=f"2026-11-2{i}T00:00:00Z", user="t")
    return m


def _status(m):
    return [v["status"] for v in m["versions"]]


def test_promote_deprecates_the_previous_current():
    m = versions.promote(_model(), 1, at="a", user="u")
    assert _status(m) == ["current", "testing", "testing"]
    m = versions.promote(m, 3, at="b", user="u", reason="passed")
    assert _status(m) == ["deprecated", "testing", "current"]
    with pytest.raises(BadInput, match="already current"):
        versions.promote(m, 3, at="c", user="u")
    with pytest.raises(BadInput, match="no version v9"):
        versions.promote(m, 9, at="c", user="u")


def test_rollback_walks_back_through_good_versions_and_records_why():
    m = _model(3)
    for n in (1, 2, 3):
        m = versions.promote(m, n, at=f"t{n}", user="u")
    m, old, new = versions.rollback(m, at="r1", user="admin", reason="faces melt")
    assert (old, new) == (3, 2) and _status(m) == ["deprecated", "current", "deprecated"]
    assert m["versions"][2]["rolled_back"]["reason"] == "faces melt"
    # v3 was rolled back: the next rollback must skip it and land on v1
    m, old, new = versions.rollback(m, at="r2", user="admin", reason="still bad")
    assert (old, new) == (2, 1) and _status(m) == ["current", "deprecated", "deprecated"]
    with pytest.raises(BadInput, match="no earlier version"):
        versions.rollback(m, at="r3", user="admin", reason="again")
    assert any(e["action"] == "rollback" and e["reason"] == "faces melt" for e in m["events"])


def test_rollback_needs_a_reason_and_a_current_version():
    m = _model(2)
    with pytest.raises(BadInput, match="reason"):
        versions.rollback(m, at="x", user="u", reason=" ")
    with pytest.raises(BadInput, match="no current"):
        versions.rollback(m, at="x", user="u", reason="why")


def test_versions_are_never_reused_and_functions_do_not_mutate():
    m = _model(2)
    before = repr(m)
    versions.promote(m, 1, at="a", user="u")
    assert repr(m) == before
    m["versions"].pop()  # even if an entry vanished, numbering continues above the highest left
    m, n = versions.add_version(m, {}, at="b", user="u")
    assert n == 2
    m, n = versions.add_version(m, {}, at="c", user="u")
    assert n == 3


def test_parse_scores():
    assert versions.parse_scores(["likeness=8.5", "n=3", "motion=ok", "x=nan"]) == {
        "likeness": 8.5, "n": 3, "motion": "ok", "x": "nan"}
    with pytest.raises(BadInput):
        versions.parse_scores(["novalue"])


def ck(step, final=False):
    return sources.Checkpoint(Path(f"/x/{step}.safetensors"), step, final=final)


def test_auto_picks_nearest_70_percent_among_60_to_80():
    cks = [ck(s) for s in (150, 300, 450, 600, 750, 900)] + [ck(1000, final=True)]
    got, why = sources.choose(cks, "auto", 1000)
    assert got.step == 750 and "70 %" in why
    # a tie (650 and 750 both 50 away) goes to the later checkpoint
    got, _ = sources.choose([ck(650), ck(750), ck(1000, True)], "auto", 1000)
    assert got.step == 750


def test_auto_falls_back_to_final_then_last():
    got, why = sources.choose([ck(100), ck(200), ck(1000, True)], "auto", 1000)
    assert got.final and "final" in why
    got, why = sources.choose([ck(100), ck(200)], "auto", None)
    assert got.step == 200 and "last" in why


def test_explicit_choices_and_their_errors():
    cks = [ck(100), ck(200)]
    assert sources.choose(cks, "200", 1000)[0].step == 200
    with pytest.raises(BadInput, match="steps: 100, 200"):
        sources.choose(cks, "300", 1000)
    with pytest.raises(BadInput, match="no final"):
        sources.choose(cks, "final", 1000)
    with pytest.raises(BadInput, match="step number"):
        sources.choose(cks, "best", 1000)


def test_notes_diff_hyperparameters_and_dataset_between_versions():
    m = _model(0)
    m, _ = versions.add_version(m, {"task": "t2v-A14B", "hyperparameters": {"learning_rate": 2e-4, "network_dim": 32},
                                    "dataset": {"hash": "aaa", "size": 20}, "files": []}, at="2026-11-27T00:00:00Z", user="u")
    m, _ = versions.add_version(m, {"task": "t2v-A14B", "hyperparameters": {"learning_rate": 1e-4, "network_dim": 32,
                                                                            "seed": 7},
                                    "dataset": {"hash": "bbb", "size": 24}, "files": []}, at="2026-11-28T00:00:00Z", user="u")
    m = versions.add_scores(m, 2, {"likeness": 9}, at="x", user="u")
    text = notes.render(m)
    assert "### Changes from v1" in text
    assert "hyperparameter `learning_rate`: 0.0002 → 0.0001" in text
    assert "hyperparameter `seed`: (unset) → 7" in text
    assert "dataset `hash`: aaa → bbb" in text and "dataset `size`: 20 → 24" in text
    assert "network_dim`:" not in text  # unchanged keys are not listed as changes
    assert "| likeness | 9 |" in text
    assert text.index("## v2") < text.index("## v1")  # newest first
    assert notes.render(m) == text  # deterministic


def test_the_dashboard_lists_the_same_changes_as_the_training_notes():
    from kohyawan.ui.pages_registry import version_changes

    m = _model(0)
    m, _ = versions.add_version(m, {"task": "t2v-A14B", "hyperparameters": {"learning_rate": 2e-4},
                                    "dataset": {"hash": "aaa", "hash_source": "run"}, "files": []},
                                at="2026-11-27T00:00:00Z", user="u")
    m, _ = versions.add_version(m, {"task": "i2v-A14B", "hyperparameters": {"learning_rate": 1e-4},
                                    "dataset": {"hash": "bbb", "hash_source": "computed"}, "files": []},
                                at="2026-11-28T00:00:00Z", user="u")
    rows = version_changes(m["versions"])
    assert rows[1] == [] and rows[2] == [("hyperparameter", "learning_rate", "0.0002", "0.0001"),
                                         ("dataset", "hash", "aaa", "bbb"), ("run", "task", "t2v-A14B", "i2v-A14B")]
    text = notes.render(m)
    section = text.split("### Changes from v1")[1].split("### Test results")[0]
    assert section.strip().splitlines() == ["- hyperparameter `learning_rate`: 0.0002 → 0.0001",
                                            "- dataset `hash`: aaa → bbb", "- task: t2v-A14B → i2v-A14B"]
