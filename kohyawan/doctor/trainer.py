"""Doctor checks for the trainer side: the musubi-tuner checkout, its Python environment, the model files.

The trainer's environment is probed by running its own python on a short script (a real subprocess, no
shell), so what is reported is what ``accelerate launch`` will find, not what kohyawan's environment has.
See docs/architecture.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Mapping

from kohyawan.doctor.result import Check
from kohyawan.files import toml

TRAIN_SCRIPT = Path("src") / "musubi_tuner" / "wan_train_network.py"
PROBE_TIMEOUT = 180

# Printed as one JSON line by the trainer's python; every import is optional.
PROBE = r"""
import json, importlib, os
out = {}
for name in ("torch", "accelerate", "bitsandbytes"):
    try:
        mod = importlib.import_module(name)
        out[name] = getattr(mod, "__version__", "?")
    except Exception as exc:
        out[name] = None
        out[name + "_error"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
try:
    import torch
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["torch_cuda"] = torch.version.cuda
    out["device_count"] = torch.cuda.device_count() if out["cuda_available"] else 0
except Exception:
    out["cuda_available"] = False
print("KOHYAWAN_PROBE " + json.dumps(out))
"""


def find_trainer(trainer_dir: Path | None) -> Path | None:
    candidate = trainer_dir or (Path(os.environ["MUSUBI_TUNER_DIR"]) if os.environ.get("MUSUBI_TUNER_DIR") else None)
    return Path(candidate) if candidate else None


def git_commit(repo: Path) -> str | None:
    """HEAD's commit from the .git folder itself (no git binary needed)."""
    git = repo / ".git"
    if git.is_file():   # a worktree or submodule: "gitdir: <path>"
        text = git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            git = (repo / text.split(":", 1)[1].strip()).resolve()
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head[:40] or None
    ref = head.split(":", 1)[1].strip()
    bases = [git]
    if (git / "commondir").is_file():   # worktrees keep shared refs in the common dir
        bases.append((git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve())
    for base in bases:
        loose = base / ref
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip()[:40]
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0][:40]
    return None


def trainer_python(trainer: Path, python: str | None) -> str | None:
    if python:
        return python
    for venv in (".venv", "venv", "env"):
        for exe in (trainer / venv / "bin" / "python", trainer / venv / "Scripts" / "python.exe"):
            if exe.is_file():
                return str(exe)
    return None


def probe_python(python: str) -> dict | None:
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in done.stdout.splitlines():
        if line.startswith("KOHYAWAN_PROBE "):
            return json.loads(line.split(" ", 1)[1])
    return None


def accelerate_config(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if env.get("ACCELERATE_CONFIG_FILE"):
        return Path(env["ACCELERATE_CONFIG_FILE"])
    hf_home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(hf_home) / "accelerate" / "default_config.yaml"


def check_trainer(trainer_dir: Path | None, python: str | None) -> list[Check]:
    trainer = find_trainer(trainer_dir)
    if trainer is None:
        return [Check("trainer", "musubi-tuner", "warn", "no checkout given (--trainer-dir or MUSUBI_TUNER_DIR)",
                      "git clone https://github.com/kohya-ss/musubi-tuner and pass --trainer-dir DIR")]
    if not (trainer / TRAIN_SCRIPT).is_file():
        return [Check("trainer", "musubi-tuner", "fail", f"{trainer} has no {TRAIN_SCRIPT}",
                      "point --trainer-dir at a musubi-tuner checkout", {"path": str(trainer)})]
    return [_checkout_check(trainer), _environment_check(trainer_python(trainer, python))]


def _checkout_check(trainer: Path) -> Check:
    version = None
    try:
        version = toml.loads((trainer / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, KeyError, toml.TOMLDecodeError):
        pass
    commit = git_commit(trainer)
    details = {"path": str(trainer), "version": version, "commit": commit}
    return Check("trainer", "musubi-tuner", "ok",
                 f"{trainer} (version {version or '?'}, commit {commit[:10] if commit else '?'})", "", details)


def _environment_check(exe: str | None) -> Check:
    if exe is None:
        return Check("trainer_env", "Trainer Python", "warn", "no virtual environment found in the checkout",
                     "pass --python PATH of the environment musubi-tuner is installed in")
    info = probe_python(exe)
    if info is None:
        return Check("trainer_env", "Trainer Python", "fail", f"{exe} did not run the probe",
                     "pass --python PATH of a working Python", {"python": exe})
    info["python"] = exe
    cfg = accelerate_config()
    info["accelerate_config"] = str(cfg) if cfg and cfg.is_file() else None
    found = environment_problems(info)
    status = "fail" if any(s == "fail" for _, _, s in found) else "warn" if found else "ok"
    summary = (f"torch {info.get('torch') or '-'} (CUDA {'yes' if info.get('cuda_available') else 'no'}), "
               f"accelerate {info.get('accelerate') or '-'}, bitsandbytes {info.get('bitsandbytes') or '-'}")
    if found:
        summary += ": " + "; ".join(problem for problem, _, _ in found)
    return Check("trainer_env", "Trainer Python", status, summary, "; ".join(fix for _, fix, _ in found), info)


def environment_problems(info: Mapping) -> list[tuple[str, str, str]]:
    """(problem, fix, "fail" | "warn") for what the trainer's python lacks, in the order they are reported."""
    found = []
    if not info.get("torch"):
        found.append(("torch missing", "install musubi-tuner's requirements with a CUDA torch", "fail"))
    elif not info.get("cuda_available"):
        found.append((f"torch {info['torch']} without CUDA",
                      "install a CUDA build of torch (pip index https://download.pytorch.org/whl/cu12x)", "fail"))
    if not info.get("accelerate"):
        found.append(("accelerate missing", "pip install accelerate", "fail"))
    if not info.get("bitsandbytes"):
        found.append(("bitsandbytes missing (AdamW8bit, the profiles' optimizer)", "pip install bitsandbytes", "fail"))
    if not info["accelerate_config"]:
        found.append(("no accelerate config (kohyawan passes the flags it needs)", "optional: run `accelerate config`",
                      "warn"))
    return found


EXPECTED_KIND = {"dit": "dit", "dit_high_noise": "dit", "vae": "vae", "t5": "t5"}


def check_models(models: Mapping[str, Path | None], task: str) -> list[Check]:
    given = {k: v for k, v in models.items() if v is not None}
    if not given:
        return [Check("models", "Model files", "skip", "not checked (no --dit/--vae/--t5 given)",
                      "pass the model files to check they suit the task")]
    try:
        from kohyawan.modelfiles.identify import identify
    except ImportError:
        return [Check("models", "Model files", "skip", "model inspection is not available in this build",
                      "update kohyawan", {k: str(v) for k, v in given.items()})]
    checks = []
    for role, path in given.items():
        cid, title = f"model_{role}", f"Model ({role})"
        if not Path(path).is_file():
            checks.append(Check(cid, title, "fail", f"{path} not found", "check the path", {"path": str(path)}))
            continue
        try:
            info = identify(path)
        except Exception as exc:   # ModelFileError carries a one-line message
            checks.append(Check(cid, title, "fail", str(exc), "use the file the guide names for this role",
                                {"path": str(path)}))
            continue
        details = info.to_dict() if hasattr(info, "to_dict") else {"path": str(path)}
        summary = getattr(info, "description", None) or str(info)
        problem = _model_problem(role, info, task)
        checks.append(Check(cid, title, "fail" if problem else "ok", summary + (f": {problem}" if problem else ""),
                            "use a bf16/fp16 (or plain fp8) Wan checkpoint of the right kind" if problem else "",
                            details))
    return checks


def _model_problem(role: str, info, task: str) -> str | None:
    kind = getattr(info, "kind", None)
    if kind != EXPECTED_KIND[role]:
        return f"this is a {kind} file, not a {EXPECTED_KIND[role]}"
    if role.startswith("dit"):
        if getattr(info, "dtype", None) == "fp8_scaled":
            return "ComfyUI fp8_scaled checkpoints do not load in musubi-tuner"
        size = getattr(info, "size", None)
        if size and size not in task:
            return f"a {size} DiT cannot train task {task}"
    if role == "vae" and getattr(info, "vae_version", None) == "2.2" and "5B" not in task:
        return "the Wan 2.2 VAE belongs to the 5B model; 14B tasks use the Wan 2.1 VAE"
    return None
