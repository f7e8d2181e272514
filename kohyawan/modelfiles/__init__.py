"""WAN model files: what a file is (from its header alone) and whether it fits a training task.

Public API (no torch, no tensor data read):
    identify(path) -> ModelInfo
    check_infos(task, expert, *, dit, dit_high_noise, vae, t5, ...) -> list[str]   (pure, over ModelInfo)
    check_models(task, expert, *, dit, dit_high_noise, vae, t5, ...) -> list[str]  (reads the files)
"""

from kohyawan.errors import ModelFileError
from kohyawan.modelfiles.check import TASKS, check_infos, check_models
from kohyawan.modelfiles.identify import ModelInfo, describe, identify

__all__ = ["ModelFileError", "ModelInfo", "TASKS", "check_infos", "check_models", "describe", "identify"]
