"""Simulated ``wan_train_network.py``: musubi-tuner's console, files and resume rules; no training."""

from __future__ import annotations

import ast
import json
import math
import os
import pickle
import random
import signal
import sys
import time

from kohyawan import wan
from kohyawan.rehearse import env
from kohyawan.rehearse.standin import BANNER
from kohyawan.rehearse.args import parse
from kohyawan.trainer.cachefiles import cached_items, load
from kohyawan.lora import fabricate
from kohyawan.lora.io import read_metadata
from kohyawan.rehearse.model import (SAVE_DTYPES, allocated_share, allocator_peaks, cuda_oom_text, ram_need,
                                     vram_need)
from kohyawan.trainer.pyshim import kohyawan_mem
from kohyawan.trainer.pyshim.kohyawan_lr import lr_factor

TB = "musubi_tuner.training.trainer_base"
TU = "musubi_tuner.utils.train_utils"


def log(logger: str, msg: str) -> None:
    print(f"INFO:{logger}:{msg}", file=sys.stderr, flush=True)


def out(msg: str) -> None:
    print(msg, flush=True)  # accelerator.print -> stdout


def fail(exc_line: str, where: str = "train") -> int:
    sys.stderr.write("Traceback (most recent call last):\n"
                     f'  File "wan_train_network.py", line 1, in <module>\n    main()\n'
                     f'  File "trainer_base.py", line 1, in {where}\n')
    sys.stderr.write(exc_line + "\n")
    sys.stderr.flush()
    return 1


class Bar:
    """tqdm's ``steps`` bar as musubi draws it (stderr, redrawn with \\r, first step excluded from rate)."""

    def __init__(self, total: int):
        self.total, self.n, self.t0, self.postfix = total, 0, None, ""
        self.draw()

    def draw(self) -> None:
        frac = self.n / self.total if self.total else 1.0
        fill = frac * 10
        full = int(fill)
        part = " ▏▎▍▌▋▊▉"[int((fill - full) * 8)] if full < 10 else ""
        bar = ("█" * full + part).ljust(10)
        if self.t0 is None or self.n <= 1:
            clock, rest, rate = "00:00", "?" if self.n == 0 else "00:00", "?it/s" if self.n == 0 else "999.99it/s"
        else:
            el = time.monotonic() - self.t0
            spi = el / (self.n - 1)
            clock, rest = _clock(el), _clock(spi * (self.total - self.n))
            rate = f"{spi:5.2f}s/it" if spi >= 1 else f"{1 / spi:5.2f}it/s"
        post = f", {self.postfix}" if self.postfix else ""
        sys.stderr.write(f"\rsteps: {int(frac * 100):3d}%|{bar}| {self.n}/{self.total} [{clock}<{rest}, {rate}{post}]")
        sys.stderr.flush()

    def update(self) -> None:
        self.n += 1
        if self.n == 1:
            self.t0 = time.monotonic()
        self.draw()

    def set_loss(self, loss: float) -> None:
        self.postfix = f"avr_loss={loss:.3g}" if math.isfinite(loss) else f"avr_loss={loss}"
        self.draw()


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Schedule:
    """musubi's scheduler choice, and what a resume does to it (restored counter, rebuilt total)."""

    def __init__(self, args, total: int, num_processes: int = 1):
        self.base = args.learning_rate if args.learning_rate is not None else 2e-6
        self.custom = None
        kwargs = {}
        for item in args.lr_scheduler_args or []:
            key, value = item.split("=")
            kwargs[key] = ast.literal_eval(value)
        if args.lr_scheduler_type:
            if args.lr_scheduler_type.endswith("ContinuedLR"):
                self.custom = kwargs
            self.kind = "constant"
        else:
            self.kind = args.lr_scheduler or "constant"
        n = total * num_processes
        warm = args.lr_warmup_steps or 0
        self.kw = dict(kind=self.kind if self.kind in ("constant", "constant_with_warmup", "linear", "cosine",
                                                       "polynomial") else "constant",
                       total_steps=n, warmup_steps=int(warm * n) if isinstance(warm, float) else int(warm))
        self.counter = 0  # LambdaLR.last_epoch

    def restore(self, counter: int) -> None:
        if self.custom is None:  # a LambdaLR takes the old counter into the new schedule
            self.counter = counter

    def lr(self) -> float:
        if self.custom is not None:
            c = dict(self.custom)
            start, scale = int(c.pop("start_step", 0)), float(c.pop("lr_scale", 1.0))
            c.pop("steps_per_update", None)
            return self.base * scale * lr_factor(start + self.counter, **c)
        return self.base * lr_factor(self.counter, **self.kw)


def main() -> int:
    args = parse("wan_train_network")
    print(BANNER, file=sys.stderr, flush=True)
    model = wan.TASKS.get(args.task)
    for p in (args.dit, args.dit_high_noise, args.vae):
        if p and not os.path.exists(p):
            return fail(f"FileNotFoundError: [Errno 2] No such file or directory: '{p}'", "_validate_args_and_init")
    if not args.dit:
        return fail("ValueError: path to DiT model is required / DiTモデルのパスが必要です")
    if not args.optimizer_type:
        return fail("ValueError: optimizer_type is required / optimizer_typeを指定してください")
    if not args.dataset_config:
        return fail("ValueError: dataset_config is required / dataset_configが必要です")
    log(TB, f"Load dataset config from {args.dataset_config}")
    datasets = load(str(args.dataset_config))
    buckets: dict[tuple, int] = {}
    items = 0
    for ds in datasets:
        found = cached_items(ds)
        per = {}
        for bucket, _ in found:
            per[bucket] = per.get(bucket, 0) + ds.num_repeats
        for bucket, count in per.items():
            log("musubi_tuner.dataset.bucket", f"bucket: {bucket}, count: {count}")
            # each dataset batches its own buckets (musubi keeps one batch manager per dataset)
            buckets[bucket + (ds.batch_size, ds.index)] = math.ceil(count / ds.batch_size)
            items += count
    batches = sum(buckets.values())
    log("musubi_tuner.dataset.bucket", f"total batches: {batches}")
    if items == 0:
        return fail("ValueError: No training items found in the dataset. Please ensure that the latent/Text Encoder "
                    "cache has been created beforehand. / データセットに学習データがありません。latent/Text Encoder"
                    "キャッシュを事前に作成したか確認してください", "_build_dataset")
    log(TB, "preparing accelerator")
    out("accelerator device: cuda (rehearsal: simulated)")
    gpu = env.gpu_gb()
    biggest = max(buckets, key=lambda b: wan.tokens(b[0], b[1], b[2]) * b[3])
    hold, peaks = vram_need(args, biggest[:4])
    scale = env.vram_scale()   # KOHYAWAN_REHEARSE_VRAM_SCALE: a GPU the estimate is off on
    hold, peaks = hold * scale, tuple(gib * scale for gib in peaks)
    share = allocated_share(args, biggest[:4])
    log(TB, f"Loading DiT model from {args.dit}")
    time.sleep(env.startup_s())
    if ram_need(args, biggest[:4]) > env.ram_gb():  # with block swap the DiTs load into host RAM first
        if args.use_pinned_memory_for_block_swap:
            return fail("RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                        "memory: you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    if hold > gpu:
        return fail(cuda_oom_text(gpu, hold, min(hold - gpu + 0.5, 2.0)), "load_transformer")
    if args.network_module != "networks.lora_wan":
        return fail(f"ModuleNotFoundError: No module named '{args.network_module}'")
    out(f"import network module: {args.network_module}")
    dim = args.network_dim or 4
    alpha = args.network_alpha if args.network_alpha is not None else 1.0
    rank = min(dim, env.rank_cap())
    log("musubi_tuner.networks.lora", f"create LoRA network. base dim (rank): {dim}, alpha: {alpha}")
    trained = 0
    if args.network_weights:
        if not os.path.exists(args.network_weights):
            return fail(f"FileNotFoundError: [Errno 2] No such file or directory: '{args.network_weights}'")
        meta = read_metadata(args.network_weights)
        if meta.get("kohyawan.rehearsal_requested_dim", str(dim)) != str(dim):
            return fail(f"RuntimeError: Error(s) in loading state_dict for LoRANetwork: size mismatch (rank "
                        f"{meta.get('kohyawan.rehearsal_requested_dim')} in the file, {dim} in the network)")
        trained = int(meta.get("kohyawan.rehearsal_trained_steps", "0"))
        out(f"load network weights from {args.network_weights}: <All keys matched successfully>")
    out("prepare optimizer, data loader etc.")
    log(TB, f"use {args.optimizer_type} optimizer | {{}}")
    per_epoch = math.ceil(batches / (args.gradient_accumulation_steps or 1))
    max_steps = args.max_train_steps if args.max_train_steps is not None else 1600
    if args.max_train_epochs is not None:
        max_steps = args.max_train_epochs * per_epoch
        out(f"override steps. steps for {args.max_train_epochs} epochs is / 指定エポックまでのステップ数: {max_steps}")
    sched = Schedule(args, max_steps)
    if args.resume:
        log(TB, f"resume training from local state: {args.resume}")
        if not os.path.isdir(args.resume):
            return fail(f"ValueError: Tried to find {args.resume} but folder does not exist", "load_state")
        log("accelerate.accelerator", f"Loading states from {args.resume}")
        meta = read_metadata(os.path.join(args.resume, "model.safetensors"))
        if meta.get("kohyawan.rehearsal_requested_dim", str(dim)) != str(dim):
            return fail("RuntimeError: Error(s) in loading state_dict for LoRANetwork: size mismatch for "
                        f"lora_unet_blocks_0_self_attn_q.lora_down.weight: copying a param with shape torch.Size("
                        f"[{meta.get('kohyawan.rehearsal_requested_dim')}, {model.dit.dim}]) from checkpoint, the shape in "
                        f"current model is torch.Size([{dim}, {model.dit.dim}]).", "load_state")
        with open(os.path.join(args.resume, "scheduler.bin"), "rb") as f:
            sched.restore(json.loads(f.read())["last_epoch"])
        with open(os.path.join(args.resume, "optimizer.bin"), "rb") as f:
            trained = json.loads(f.read())["trained_steps"]
        for what in ("model weights", "optimizer states", "scheduler states", "dataloader sampler states"):
            log("accelerate.checkpointing", f"All {what} loaded successfully")
        log("accelerate.checkpointing", "Could not load random states")
        log("accelerate.accelerator", "Loading in 0 custom states")
    epochs = math.ceil(max_steps / per_epoch)
    out("running training / 学習開始")
    out(f"  num train items / 学習画像、動画数: {items}")
    out(f"  num batches per epoch / 1epochのバッチ数: {batches}")
    out(f"  num epochs / epoch数: {epochs}")
    out(f"  batch size per device / バッチサイズ: {', '.join(str(d.batch_size) for d in datasets)}")
    out(f"  gradient accumulation steps / 勾配を合計するステップ数 = {args.gradient_accumulation_steps or 1}")
    out(f"  total optimization steps / 学習ステップ数: {max_steps}")
    return _loop(args, rank, dim, alpha, max_steps, batches, per_epoch, epochs, sched, trained, gpu, peaks, hold, share)


def _save_weights(path: str, task: str, rank: int, alpha: float, seed: int, trained_steps: int, code: str,
                  meta: dict) -> None:
    """The LoRA with the task's real keys; its up matrices drift with the steps trained (never zero, so the
    checkpoints' effect grows), written in place without hashes as the simulated save always was."""
    fabricate.save_lora(path, task=task, rank=rank, alpha=alpha, code=code, metadata=meta, seed=seed, scale=0.01,
                        up=1e-3 * trained_steps, musubi_hashes=False, in_place=True)


def _loop(args, rank, dim, alpha, max_steps, batches, per_epoch, epochs, sched, trained, gpu, peaks, hold,
          share) -> int:
    started = time.time()  # musubi's ss_training_started_at: when this process began training
    seed = args.seed if args.seed is not None else 42
    faults = env.faults()
    step_s = env.step_s()
    lr_log = os.environ.get("KOHYAWAN_REHEARSE_LR_LOG")
    save_dtype = SAVE_DTYPES.get(args.save_precision, "F32")
    outdir, name = args.output_dir or ".", args.output_name or "wan_lora"
    rng = random.Random(seed + trained)
    losses: list[float] = []
    spike = nan = False

    def save_lora(fname: str, steps: int, epoch_no: int) -> None:
        os.makedirs(outdir, exist_ok=True)
        path = os.path.join(outdir, fname)
        out(f"\nsaving checkpoint: {path}")
        meta = {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha), "ss_steps": str(steps),
                "ss_epoch": str(epoch_no), "ss_learning_rate": str(sched.base), "ss_output_name": name,
                "ss_network_module": args.network_module, "ss_training_comment": str(args.training_comment),
                "ss_training_started_at": str(started), "ss_training_finished_at": str(time.time()),
                "ss_num_batches_per_epoch": str(batches),
                "ss_gradient_accumulation_steps": str(args.gradient_accumulation_steps or 1),
                "ss_num_epochs": str(epochs), "ss_max_train_steps": str(max_steps),
                "modelspec.architecture": "wan2.1/lora", "modelspec.title": args.metadata_title or name,
                "kohyawan.rehearsal": "true", "kohyawan.rehearsal_rank": str(rank),
                "kohyawan.rehearsal_requested_dim": str(dim), "kohyawan.rehearsal_trained_steps": str(trained + steps),
                "kohyawan.rehearsal_note": "written by kohyawan's simulated trainer: no training happened"}
        _save_weights(path, args.task, rank, alpha, seed, trained + steps, save_dtype, meta)

    def save_state(state_name: str, steps: int, what: str) -> None:
        log(TU, "")
        log(TU, what)
        d = os.path.join(outdir, state_name)
        log("accelerate.accelerator", f"Saving current state to {d}")
        os.makedirs(d, exist_ok=True)
        _save_weights(os.path.join(d, "model.safetensors"), args.task, rank, alpha, seed, trained + steps, "F32",
                      {"kohyawan.rehearsal": "true", "kohyawan.rehearsal_requested_dim": str(dim)})
        log("accelerate.checkpointing", f"Model weights saved in {d}/model.safetensors")
        for fname, data in (("optimizer.bin", {"rehearsal": True, "trained_steps": trained + steps}),
                            ("scheduler.bin", {"rehearsal": True, "last_epoch": sched.counter}),
                            ("sampler.bin", {"rehearsal": True})):
            with open(os.path.join(d, fname), "wb") as f:
                f.write(json.dumps(data).encode())
            label = {"optimizer.bin": "Optimizer state", "scheduler.bin": "Scheduler state",
                     "sampler.bin": "Sampler state for dataloader 0"}[fname]
            log("accelerate.checkpointing", f"{label} saved in {d}/{fname}")
        with open(os.path.join(d, "random_states_0.pkl"), "wb") as f:
            pickle.dump({"rehearsal": True, "step": steps}, f)
        log("accelerate.checkpointing", f"Random states saved in {d}/random_states_0.pkl")

    out("")
    bar = Bar(max_steps)
    log(TB, "network weights will be saved as " + {"F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16"}[save_dtype] + (f" (--save_precision {args.save_precision})" if args.save_precision else " (default)"))
    step = 0
    for epoch in range(epochs):
        out(f"\nepoch {epoch + 1}/{epochs}")
        for i in range(per_epoch):
            time.sleep(step_s)
            fault = faults.at(step + 1)
            peak = peaks[min(step, 1)]      # step 1 without optimizer state, then with it
            if fault == "oom" or (step < 2 and peak > gpu):
                print(file=sys.stderr)
                return fail(cuda_oom_text(gpu, max(peak, gpu + 0.5), max(0.5, min(peak - hold, 4.0))), "forward")
            if fault == "host_oom":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "crash":
                print(file=sys.stderr)
                return fail("RuntimeError: Expected all tensors to be on the same device, but found at least two "
                            "devices, cuda:0 and cpu!", "forward")
            if fault == "stall":
                while True:  # a hung data loader or collective: alive, silent, no progress
                    time.sleep(3600)
            spike = spike or fault == "spike"
            nan = nan or fault == "nan"
            if lr_log:
                with open(lr_log, "a") as f:
                    f.write(json.dumps({"step": step + 1, "lr": sched.lr(), "output_name": name}) + "\n")
            loss = 0.08 + 0.06 * math.exp(-(trained + step) / 200) + rng.uniform(-0.02, 0.02)
            loss = float("nan") if nan else loss * (6.0 if spike else 1.0)
            sched.counter += 1
            if sched.custom is not None and os.environ.get(kohyawan_mem.ENV):  # as kohyawan_lr.ContinuedLR does
                allocated, reserved = allocator_peaks(peak, share)
                kohyawan_mem.write(os.environ[kohyawan_mem.ENV], step=sched.counter, allocated=allocated,
                                   reserved=reserved)
            bar.update()
            step += 1
            if args.save_every_n_steps and step % args.save_every_n_steps == 0:
                save_lora(f"{name}-step{step:08d}.safetensors", step, epoch)
                if args.save_state:
                    save_state(f"{name}-step{step:08d}-state", step, f"saving state at step {step}")
                _prune(args, outdir, name, step)
            # musubi's LossRecorder: after the first epoch, a window of one epoch's steps
            if epoch == 0:
                losses.append(loss)
            else:
                losses[i] = loss
            bar.set_loss(sum(losses) / len(losses))
            if step >= max_steps:
                break
        if args.save_every_n_epochs and (epoch + 1) % args.save_every_n_epochs == 0 and epoch + 1 < epochs:
            save_lora(f"{name}-{epoch + 1:06d}.safetensors", step, epoch + 1)
            if args.save_state:
                save_state(f"{name}-{epoch + 1:06d}-state", step, f"saving state at epoch {epoch + 1}")
    if args.save_state or args.save_state_on_train_end:
        save_state(f"{name}-state", step, "saving last state.")
    save_lora(f"{name}.safetensors", step, epochs)
    log(TB, "model saved.")
    bar.draw()
    sys.stderr.write("\n")
    return 0


def _prune(args, outdir: str, name: str, step: int) -> None:
    if args.save_last_n_steps is None:
        return
    old = step - args.save_last_n_steps - 1
    old -= old % args.save_every_n_steps
    if old > 0:
        path = os.path.join(outdir, f"{name}-step{old:08d}.safetensors")
        if os.path.exists(path):
            out(f"removing old checkpoint: {path}")
            os.remove(path)
