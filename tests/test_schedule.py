"""The learning rate continues exactly across a resume (design §2): proved with the real class in torch,
the way musubi-tuner and accelerate use it, against an uninterrupted run."""

import math
import sys

import pytest

from kohyawan.run import lrschedule

torch = pytest.importorskip("torch")
sys.path.insert(0, str(lrschedule.pyshim_dir()))
import kohyawan_lr  # noqa: E402

TRAIN = {"learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 10}
T, S = 100, 37


def _optimizer(lr):
    p = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([p], lr=lr), p


def _build(lr, args):
    """As musubi builds it: class from --lr_scheduler_type, kwargs parsed with ast.literal_eval."""
    import ast

    opt, p = _optimizer(lr)
    kwargs = {a.split("=")[0]: ast.literal_eval(a.split("=")[1]) for a in args}
    cls = getattr(__import__("kohyawan_lr"), lrschedule.SCHEDULER_CLASS.split(".")[1])
    return opt, p, cls(opt, **kwargs)


def _train(opt, p, sched, n):
    used = []
    for _ in range(n):
        used.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    return used


@pytest.mark.parametrize("kind", ["cosine", "linear", "cosine_with_restarts", "polynomial", "constant_with_warmup"])
def test_lr_at_every_absolute_step_matches_an_uninterrupted_run(kind):
    train = {**TRAIN, "lr_scheduler": kind, "lr_scheduler_num_cycles": 3}
    args = lrschedule.continuation(train, total_steps=T, start_step=0)["lr_scheduler_args"]
    opt, p, sched = _build(1e-3, args)
    straight = _train(opt, p, sched, T)
    # interrupted after S steps: the trainer saved optimizer and scheduler state
    opt, p, sched = _build(1e-3, args)
    first = _train(opt, p, sched, S)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    # resumed: a new process, max_train_steps = T - S, state loaded (optimizer before scheduler)
    args2 = lrschedule.continuation(train, total_steps=T, start_step=S)["lr_scheduler_args"]
    opt, p, sched = _build(1e-3, args2)
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved_sched)
    second = _train(opt, p, sched, T - S)
    assert first + second == pytest.approx(straight, rel=1e-12, abs=0)
    for step, lr in enumerate(straight):
        assert lr == pytest.approx(lrschedule.lr_at(train, step, total_steps=T), rel=1e-12)


def test_the_trainers_own_resume_would_bend_the_schedule():
    """What musubi does without kohyawan: rebuild cosine from the new max_train_steps, restore the counter."""
    def lam(total):
        def f(step):
            if step < 10:
                return step / 10
            prog = (step - 10) / max(1, total - 10)
            return max(0.0, 0.5 * (1 + math.cos(math.pi * prog)))
        return f

    opt, p = _optimizer(1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam(T))
    straight = _train(opt, p, sched, T)
    opt, p = _optimizer(1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam(T))
    first = _train(opt, p, sched, S)
    so, ss = opt.state_dict(), sched.state_dict()
    opt, p = _optimizer(1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam(T - S))
    opt.load_state_dict(so)
    sched.load_state_dict(ss)
    second = _train(opt, p, sched, T - S)
    assert first + second != pytest.approx(straight)


def test_half_lr_applies_from_the_first_resumed_step():
    args = lrschedule.continuation(TRAIN, total_steps=T, start_step=0)["lr_scheduler_args"]
    opt, p, sched = _build(1e-3, args)
    straight = _train(opt, p, sched, T)
    opt, p, sched = _build(1e-3, args)
    _train(opt, p, sched, S)
    so, ss = opt.state_dict(), sched.state_dict()
    args2 = lrschedule.continuation(TRAIN, total_steps=T, start_step=S, lr_scale=0.5)["lr_scheduler_args"]
    opt, p, sched = _build(1e-3, args2)
    opt.load_state_dict(so)
    sched.load_state_dict(ss)
    second = _train(opt, p, sched, T - S)
    assert second == pytest.approx([0.5 * v for v in straight[S:]], rel=1e-12)


def test_unsupported_schedules_are_reported():
    ok, why = lrschedule.supported({"lr_scheduler": "rex"})
    assert not ok and "rex" in why
    assert lrschedule.continuation({"lr_scheduler_type": "x.Y"}, total_steps=10, start_step=0) is None
    assert kohyawan_lr.lr_factor(5, kind="constant") == 1.0
