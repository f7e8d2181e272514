import math

from kohyawan.run.watchdog import Watchdog, settings


def _feed(wd, losses, t0=0.0, dt=1.0):
    t = t0
    for i, loss in enumerate(losses, 1):
        t += dt
        wd.step(i, loss, t)
    return t


def test_stall_limit_is_max_of_minutes_and_factor_times_median_counted_from_first_step():
    wd = Watchdog({"stall_minutes": 10, "stall_factor": 5, "startup_minutes": 60}, started=0.0)
    assert wd.check(59 * 60) == []                      # still loading the model: startup limit
    assert [a.kind for a in wd.check(61 * 60)] == ["stall"]
    wd = Watchdog({"stall_minutes": 10, "stall_factor": 5}, started=0.0)
    t = _feed(wd, [0.1] * 5, t0=100.0, dt=180.0)       # 3 min per step -> 5x median = 15 min > 10 min
    assert wd.stall_limit_s() == 15 * 60
    assert wd.check(t + 14 * 60) == []
    alerts = wd.check(t + 16 * 60)
    assert alerts[0].kind == "stall" and alerts[0].fatal
    fast = Watchdog({"stall_minutes": 10, "stall_factor": 5}, started=0.0)
    t = _feed(fast, [0.1] * 5, dt=2.0)
    assert fast.stall_limit_s() == 600 and fast.check(t + 599) == [] and fast.check(t + 601)


def test_caching_stage_uses_its_own_limit_on_any_output():
    wd = Watchdog({"cache_stall_minutes": 60}, stage="cache", started=0.0)
    wd.output(30 * 60)
    assert wd.check(89 * 60) == []
    assert wd.check(91 * 60)[0].kind == "stall"


def test_nan_and_inf_are_fatal():
    for bad in (float("nan"), float("inf")):
        wd = Watchdog({}, started=0.0)
        _feed(wd, [0.1, 0.1, bad])
        alerts = wd.check(4.0)
        assert alerts and alerts[0].kind == "nan" and alerts[0].fatal and "step 3" in alerts[0].message


def test_loss_spike_needs_a_sustained_jump():
    cfg = {"loss_spike_window": 10, "loss_spike_patience": 5, "loss_spike_factor": 2.0}
    wd = Watchdog(cfg, started=0.0)
    t = _feed(wd, [0.1] * 10 + [0.25] * 4)           # 4 high values: patience not reached
    assert wd.check(t) == []
    wd.step(15, 0.25, t + 1)
    assert [a.kind for a in wd.check(t + 1)] == ["loss_spike"]
    # a bump that comes back is not a spike
    wd = Watchdog(cfg, started=0.0)
    t = _feed(wd, [0.1] * 10 + [0.3] * 4 + [0.12] * 3)
    assert wd.check(t) == []
    # the redraw of the same step replaces its value (musubi draws every step twice)
    wd = Watchdog(cfg, started=0.0)
    wd.step(1, 0.5, 1.0)
    wd.step(1, 0.1, 1.1)
    assert wd.losses == [0.1]


def test_low_utilisation_warns_once_and_rearms():
    wd = Watchdog({"low_util_percent": 30, "low_util_minutes": 10, "stall_minutes": 100}, started=0.0)
    wd.step(1, 0.1, 1.0)
    wd.gpu(5, 10, 24, 10.0)
    assert wd.check(10.0 + 9 * 60) == []
    wd.gpu(5, 10, 24, 10.0 + 11 * 60)
    alerts = wd.check(10.0 + 11 * 60)
    assert [a.kind for a in alerts] == ["low_util"] and not alerts[0].fatal
    assert wd.check(10.0 + 12 * 60) == []


def test_nearly_full_vram_warns_on_a_mig_instance_too():
    """A MIG instance reports memory but no utilisation of its own: the memory margin still counts."""
    wd = Watchdog({"vram_margin_gb": 1.5, "stall_minutes": 100}, started=0.0)
    wd.step(1, 0.1, 1.0)
    wd.gpu(None, 23.5, 24.0, 2.0)
    alerts = wd.check(3.0)
    assert [a.kind for a in alerts] == ["vram_margin"] and "23.5 of 24.0 GB" in alerts[0].message
    assert wd.low_util_since is None


def test_settings_take_profile_values():
    cfg = settings({"stall_minutes": 3, "unknown": 1})
    assert cfg["stall_minutes"] == 3.0 and "unknown" not in cfg and not math.isnan(cfg["loss_spike_factor"])
