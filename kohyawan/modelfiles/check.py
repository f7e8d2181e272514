"""Does a set of model files fit a musubi-tuner WAN task? Pure over ``ModelInfo``; one thin reader.

Each refusal is one line that names the file, says what is wrong and what to use instead, so a user
learns it before anything is written, not minutes later when the trainer's strict ``load_state_dict``
fails on the loaded DiT. Facts (musubi-tuner ``wan/configs``, ``wan_train_network.py``, docs/wan.md):
every task uses the Wan 2.1 VAE; the DiT dtype is read from ``blocks.0.cross_attn.k.weight`` and a bf16
DiT asserts mixed precision bf16 (or no), an fp16 DiT fp16 (or no); fp8 weights refuse ``--fp8_scaled``;
ComfyUI scaled-fp8 checkpoints never load; ``--t5`` loads Wan's own umT5 layout strictly. Which model
each task trains is ``kohyawan.wan.TASKS``. Design: docs/architecture.md.
"""

from __future__ import annotations

import os

from kohyawan import wan
from kohyawan.errors import ModelFileError
from kohyawan.modelfiles.header import shown
from kohyawan.modelfiles.identify import ModelInfo, identify

_SUGGEST_DIT = {
    "t2v-A14B": "wan2.2_t2v_high_noise_14B_fp16 / wan2.2_t2v_low_noise_14B_fp16",
    "i2v-A14B": "wan2.2_i2v_high_noise_14B_fp16 / wan2.2_i2v_low_noise_14B_fp16",
    "t2v-14B": "wan2.1_t2v_14B_bf16", "t2i-14B": "wan2.1_t2v_14B_bf16", "t2v-1.3B": "wan2.1_t2v_1.3B_bf16",
    "i2v-14B": "wan2.1_i2v_480p_14B_bf16 (or 720p)", "flf2v-14B": "wan2.1_flf2v_720p_14B_fp16",
}
VAE_HINT = "the Wan 2.1 VAE (wan_2.1_vae.safetensors or Wan2.1_VAE.pth)"
T5_HINT = "Wan's models_t5_umt5-xxl-enc-bf16.pth (from Wan-AI/Wan2.1-T2V-14B)"


def _model_words(i: ModelInfo) -> str:
    fam = wan.FAMILY_NAMES.get(i.family or "", "")
    words = f"{fam} {wan.VARIANT_NAMES.get(i.variant or '', i.variant or '')} {i.size or ''} DiT"
    return " ".join(words.split())


def check_infos(task: str, expert: str, *, dit: ModelInfo | None, dit_high_noise: ModelInfo | None,
                vae: ModelInfo | None, t5: ModelInfo | None, mixed_precision: str = "bf16",
                fp8_base: bool = False, fp8_scaled: bool = False) -> list[str]:
    """Warnings for what may be wrong; ModelFileError for what cannot work. ``None`` = not given."""
    if task not in wan.TASKS:
        raise ModelFileError(f"unknown task {task!r}; musubi-tuner's WAN tasks are {', '.join(wan.TASKS)}")
    want = wan.TASKS[task]
    if fp8_scaled and not fp8_base:
        raise ModelFileError("fp8_scaled needs fp8_base (musubi-tuner asserts this); set fp8_base=true as well")
    warnings: list[str] = []
    roles = _dit_roles(want, expert, dit, dit_high_noise, warnings)
    for opt, info, role in roles:
        warnings += _check_dit(want, opt, info, role)
        _check_precision(f"{opt} {shown(info.path)}", info, mixed_precision, fp8_base, fp8_scaled)
    if len(roles) == 2 and os.path.realpath(roles[0][1].path) == os.path.realpath(roles[1][1].path):
        raise ModelFileError(f"--dit and --dit-high-noise are the same file ({shown(roles[0][1].path)}); "
                             f"the low- and high-noise experts are two different files")
    if vae is not None:
        _check_vae(task, vae)
    if t5 is not None:
        _check_t5(t5)
    return warnings


def _dit_roles(want: wan.TaskModel, expert: str, dit: ModelInfo | None, dit_high_noise: ModelInfo | None,
               warnings: list[str]) -> list[tuple[str, ModelInfo, str | None]]:
    """(option, info, expert it serves) for each DiT the task trains with this expert mode."""
    task = want.task
    if not want.dual:
        if dit_high_noise is not None:
            raise ModelFileError(f"task {task} is a single Wan 2.1 model: --dit-high-noise "
                                 f"({shown(dit_high_noise.path)}) applies only to t2v-A14B and i2v-A14B")
        return [] if dit is None else [("--dit", dit, None)]
    if expert in ("both", "sequential"):
        for opt, info in (("--dit", dit), ("--dit-high-noise", dit_high_noise)):
            if info is None:
                raise ModelFileError(f"task {task} with expert '{expert}' trains both experts: give the "
                                     f"low-noise DiT as --dit and the high-noise DiT as --dit-high-noise "
                                     f"({opt} is missing)")
        return [("--dit", dit, "low"), ("--dit-high-noise", dit_high_noise, "high")]
    if expert == "high":
        info, opt = (dit_high_noise, "--dit-high-noise") if dit_high_noise is not None else (dit, "--dit")
        if info is None:
            raise ModelFileError(f"task {task} with expert 'high' needs the high-noise DiT (--dit-high-noise)")
        return [(opt, info, "high")]
    if expert == "low":
        if dit is None:
            raise ModelFileError(f"task {task} with expert 'low' needs the low-noise DiT (--dit)")
        if dit_high_noise is not None:
            warnings.append(f"expert 'low' trains only --dit; {shown(dit_high_noise.path)} (--dit-high-noise) "
                            f"is not used")
        return [("--dit", dit, "low")]
    raise ModelFileError(f"unknown expert mode {expert!r}; expected both, high, low or sequential")


def _check_dit(want: wan.TaskModel, opt, info: ModelInfo, role) -> list[str]:
    where = f"{opt} {shown(info.path)}"
    suggest = _SUGGEST_DIT.get(want.task)
    use = f"; use {suggest}" if suggest else ""
    _check_dit_file(want.task, where, info, use)
    _check_dit_model(want, where, info, use)
    warnings: list[str] = []
    if want.variant == "t2v" and info.family and info.family != want.family:
        warnings.append(f"{where}: its name says {info.family}, but task {want.task} trains "
                        f"{wan.FAMILY_NAMES[want.family]}; the layouts are identical, so it loads, "
                        f"but it is a different model")
    if want.dual and role:
        if info.expert_hint and info.expert_hint != role:
            warnings.append(f"{where}: its name says {info.expert_hint}-noise expert, but it is given as the "
                            f"{role}-noise one; swap --dit and --dit-high-noise if that is a mistake")
        elif info.expert_hint is None:
            warnings.append(f"{where}: its name does not say high or low noise (the two experts have identical "
                            f"headers); make sure it is the {role}-noise expert")
    return warnings


def _check_dit_file(task: str, where: str, info: ModelInfo, use: str) -> None:
    """Refusals that do not depend on which model the task wants: not a DiT, not a file musubi loads."""
    if info.kind != "dit":
        what = {"vae": "a VAE", "t5": "a T5 text encoder", "clip": "a CLIP image encoder", "lora": "a LoRA"}.get(
            info.kind, "not a WAN DiT")
        raise ModelFileError(f"{where}: is {what}, not a WAN DiT{use}")
    if info.file_format != "safetensors":
        raise ModelFileError(f"{where}: musubi-tuner reads the DiT from a .safetensors file only{use}")
    if info.dtype == "fp8_scaled":
        raise ModelFileError(f"{where}: is a ComfyUI fp8_scaled checkpoint, which musubi-tuner cannot load (not "
                             f"even with --fp8_scaled); use the bf16 or fp16 file and fp8_base=true to save memory")
    if info.layout_ok is False and info.variant is None:  # e.g. a Diffusers-layout DiT: nothing else applies
        raise ModelFileError(f"{where}: its tensors do not match what musubi-tuner loads for {task} "
                             f"({_layout_note(info)}){use}")


def _check_dit_model(want: wan.TaskModel, where: str, info: ModelInfo, use: str) -> None:
    """Refusals of a DiT that is another model than the task trains."""
    task = want.task
    if info.size != want.size:
        raise ModelFileError(f"{where}: is a {_model_words(info)}, but task {task} trains the {want.size} model{use}")
    if info.variant != want.variant:
        word = wan.VARIANT_NAMES.get(want.variant, want.variant)
        article = "an" if word[0] in "AEFIOU" else "a"
        raise ModelFileError(f"{where}: is a {_model_words(info)}, but task {task} needs {article} {word} DiT{use}")
    if want.variant in ("i2v", "flf2v", "fun-control") and info.family and info.family != want.family:
        why = ("Wan 2.1 I2V has a CLIP image branch (img_emb, k_img/v_img) that the Wan 2.2 I2V experts do not"
               if info.family == "wan2.1" else "Wan 2.2 I2V has no CLIP image branch, which the Wan 2.1 task loads")
        raise ModelFileError(f"{where}: is a {_model_words(info)}, but task {task} needs the "
                             f"{wan.FAMILY_NAMES[want.family]} model ({why}){use}")
    if info.layout_ok is False:
        raise ModelFileError(f"{where}: its tensors do not match what musubi-tuner loads for {task} "
                             f"({_layout_note(info)}){use}")


def _layout_note(info: ModelInfo) -> str:
    return next((n for n in info.notes if n.startswith("differs from")), "unexpected tensors")


def _check_precision(where, info: ModelInfo, mixed_precision, fp8_base, fp8_scaled) -> None:
    d = info.dtype
    if d == "bf16" and mixed_precision not in ("bf16", "no"):
        raise ModelFileError(f"{where}: a bf16 checkpoint trains with mixed_precision bf16 (musubi-tuner asserts "
                             f"this), not {mixed_precision}; set mixed_precision=bf16 or use an fp16 checkpoint")
    if d == "fp16" and mixed_precision not in ("fp16", "no"):
        raise ModelFileError(f"{where}: an fp16 checkpoint trains with mixed_precision fp16 (musubi-tuner asserts "
                             f"this), not {mixed_precision}; set mixed_precision=fp16 or use a bf16 checkpoint")
    if d == "fp8_e4m3fn":
        if not fp8_base or fp8_scaled:
            raise ModelFileError(f"{where}: a plain fp8_e4m3fn checkpoint trains only with fp8_base=true and "
                                 f"fp8_scaled=false; set those, or use a bf16/fp16 checkpoint")
    elif d in ("fp8_e5m2",) or (d not in ("bf16", "fp16", "fp32", "fp8_e4m3fn")):
        raise ModelFileError(f"{where}: {d} weights are not in musubi-tuner's support matrix (bf16, fp16, "
                             f"fp8_e4m3fn); use the bf16 or fp16 checkpoint")


def _check_vae(task, vae: ModelInfo) -> None:
    where = f"--vae {shown(vae.path)}"
    if vae.kind != "vae":
        what = {"dit": "a DiT", "t5": "a T5 text encoder", "clip": "a CLIP image encoder", "lora": "a LoRA"}.get(
            vae.kind, "not a WAN VAE")
        raise ModelFileError(f"{where}: is {what}, not a VAE; use {VAE_HINT}")
    if vae.vae_version == "2.2":
        raise ModelFileError(f"{where}: is the Wan 2.2 VAE (48 latent channels), which belongs to the 5B model; "
                             f"task {task} uses {VAE_HINT}")
    if vae.vae_version != "2.1" or vae.layout_ok is False:
        raise ModelFileError(f"{where}: is not the Wan 2.1 VAE musubi-tuner loads; use {VAE_HINT}")


def _check_t5(t5: ModelInfo) -> None:
    where = f"--t5 {shown(t5.path)}"
    if t5.kind != "t5":
        what = {"dit": "a DiT", "vae": "a VAE", "clip": "a CLIP image encoder", "lora": "a LoRA"}.get(
            t5.kind, "not a T5 text encoder")
        raise ModelFileError(f"{where}: is {what}; use {T5_HINT}")
    vocab = t5.arch.get("vocab")
    if vocab is not None and vocab != wan.UMT5.vocab:
        raise ModelFileError(f"{where}: is a T5 with a {vocab}-token vocabulary, not WAN's umT5-XXL; use {T5_HINT}")
    if t5.t5_format == "hf":
        raise ModelFileError(f"{where}: is a Hugging Face/ComfyUI-format umT5 (encoder.block.N.layer...), but "
                             f"musubi-tuner's --t5 loads Wan's own layout strictly; use {T5_HINT}")
    if t5.dtype == "fp8_scaled" or t5.layout_ok is False:
        raise ModelFileError(f"{where}: does not have the tensors musubi-tuner's T5 loader expects; use {T5_HINT}")


def check_models(task: str, expert: str, *, dit=None, dit_high_noise=None, vae=None, t5=None,
                 mixed_precision: str = "bf16", fp8_base: bool = False, fp8_scaled: bool = False) -> list[str]:
    """Read each given path's header (``None`` = not given) and run ``check_infos``."""
    def read(opt: str, path):
        if path is None:
            return None
        try:
            return identify(path)
        except ModelFileError as exc:
            raise ModelFileError(f"{opt} {exc}") from None

    return check_infos(task, expert, dit=read("--dit", dit), dit_high_noise=read("--dit-high-noise", dit_high_noise),
                       vae=read("--vae", vae), t5=read("--t5", t5), mixed_precision=mixed_precision,
                       fp8_base=fp8_base, fp8_scaled=fp8_scaled)
