"""WAN model files: what a file is (from its header alone) and whether it fits a training task.

No torch and no tensor data read. ``identify.identify(path) -> ModelInfo``; ``check.check_infos`` (pure, over
``ModelInfo``) and ``check.check_models`` (reads the files) refuse what musubi-tuner cannot load;
``layouts`` and ``standins`` give and write the exact tensor layouts. Design: docs/architecture.md.
"""
