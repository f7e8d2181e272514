import math
from pathlib import Path

import pytest

from kohyawan.trainer.musubi_log import LineSplitter, classify_failure, error_line, parse_line

FIXTURE = Path(__file__).parent / "fixtures" / "musubi_console_sample.txt"


def _events(data: bytes):
    sp = LineSplitter()
    out = []
    for chunk in (data[i:i + 7] for i in range(0, len(data), 7)):  # tiny chunks: lines split anywhere
        for line in sp.feed(chunk):
            out.extend(parse_line(line))
    for line in sp.flush():
        out.extend(parse_line(line))
    return out


def test_grammar_on_a_console_sample():
    evs = _events(FIXTURE.read_bytes().replace(b"]steps:", b"]\rsteps:"))
    kinds = [e.kind for e in evs]
    startup = {e.key: e.value for e in evs if e.kind == "startup"}
    assert startup == {"items": 6, "batches_per_epoch": 6, "epochs": 2, "total_steps": 18}  # override wins last
    progress = [e for e in evs if e.kind == "progress"]
    assert [p.step for p in progress] == [0, 1, 2, 2, 3]
    assert progress[2].loss == 0.212 and progress[3].loss == 0.198
    assert progress[3].s_per_it == pytest.approx(9.15) and progress[3].eta_s == 91
    assert progress[4].s_per_it == pytest.approx(0.8) and math.isnan(progress[4].loss)
    assert progress[4].elapsed_s == 3723 and progress[4].eta_s == 4804
    assert ("epoch", 1, 2) in [(e.kind, e.epoch, e.epochs) for e in evs]
    ck = [e.path for e in evs if e.kind == "checkpoint"]
    assert ck == ["/runs/a b/output/my lora-step00000002.safetensors"]
    assert [e.path for e in evs if e.kind == "state_saved"] == ["/runs/a b/output/my lora-step00000002-state"]
    assert [(e.key, e.value) for e in evs if e.kind == "state" and e.key == "step"] == [("step", 2)]
    assert [e.key for e in evs if e.kind == "removed"] == ["checkpoint", "state"]
    assert [e.step for e in evs if e.kind == "sample"] == [3]
    assert [e.path for e in evs if e.kind == "resumed"] == ["/runs/x-state"]
    assert kinds[-1] == "model_saved"


def test_bar_glued_to_a_log_line_gives_both_events():
    evs = parse_line("steps:   0%|          | 0/10 [00:00<?, ?it/s]INFO:musubi_tuner.training.trainer_base:model saved.")
    assert [e.kind for e in evs] == ["progress", "model_saved"]
    assert evs[0].step == 0 and evs[0].s_per_it is None


def test_splitter_splits_on_cr_and_lf_and_keeps_partial_lines():
    sp = LineSplitter()
    assert sp.feed(b"a\rb\nc") == ["a", "b"]
    assert sp.feed(b"d\r\n") == ["cd"]
    assert sp.feed("é".encode()[:1]) == []
    assert sp.feed("é\n".encode()[1:]) == ["é"]


OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
       "23.55 GiB of which 1.05 GiB is free.")
WRAP = ["Traceback (most recent call last):", '  File "accelerate", line 6, in <module>',
        "subprocess.CalledProcessError: Command '['python', 'wan_train_network.py']' returned non-zero exit status 1."]


@pytest.mark.parametrize("lines,code,outcome,needle", [
    (["Traceback (most recent call last):", OOM] + WRAP, 1, "oom_vram", "CUDA out of memory"),
    (["torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB"], 1, "oom_vram", "torch.cuda"),
    (["RuntimeError: CUDA error: out of memory"], 1, "oom_vram", "CUDA error"),
    (["RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"], 1, "oom_vram",
     "CUBLAS"),
    (["RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
      "tried to allocate 1073741824 bytes."] + WRAP, 1, "oom_ram", "DefaultCPUAllocator"),
    (["subprocess.CalledProcessError: Command '['python', 'x.py']' died with <Signals.SIGKILL: 9>."], 1, "oom_ram",
     "SIGKILL"),
    (["steps:  10%|█         | 1/10 [00:01<00:09,  1.00s/it, avr_loss=0.1]"], -9, "oom_ram", "SIGKILL"),
    (["Traceback (most recent call last):", "ValueError: Tried to find /x-state but folder does not exist"] + WRAP, 1,
     "crashed", "ValueError: Tried to find /x-state"),
    (["usage: wan_train_network.py [-h]", "wan_train_network.py: error: unrecognized arguments: --nope 1"] + WRAP, 1,
     "crashed", "unrecognized arguments"),
    (["something unexpected"], 3, "crashed", "exit status 3: something unexpected"),
])
def test_failure_classification(lines, code, outcome, needle):
    f = classify_failure(lines, code)
    assert f.outcome == outcome
    assert needle in f.line
    assert "CalledProcessError" not in f.line or outcome == "oom_ram"


def test_error_line_skips_accelerates_wrapper():
    assert error_line(["KeyError: 'x'"] + WRAP) == "KeyError: 'x'"


def test_a_finished_bar_is_handed_out_before_the_next_redraw():
    # tqdm writes "\r" before each redraw: the bar for step 1 sits unterminated until step 2's arrives
    from kohyawan.trainer.musubi_log import LineSplitter, parse_line

    split = LineSplitter()
    first = split.feed(b"\rsteps:  25%|##5       | 1/4 [00:00<00:00, 325.64it/s, avr_loss=2.53]")
    assert len(first) == 1
    (event,) = parse_line(first[0])
    assert event.step == 1 and event.loss == 2.53
    assert event.s_per_it is None and event.eta_s is None  # the first step's rate means nothing
    second = split.feed(b"\rsteps:  50%|#####     | 2/4 [00:46<00:46, 23.22s/it, avr_loss=2.50]")
    assert [parse_line(s)[0].step for s in second] == [2]  # step 1 is not handed out twice
    (event,) = parse_line(second[0])
    assert event.s_per_it == 23.22
    assert split.feed(b"\nINFO:musubi_tuner.training.trainer_base:model saved.\n") == [
        "INFO:musubi_tuner.training.trainer_base:model saved."]
