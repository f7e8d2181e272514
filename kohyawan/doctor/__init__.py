"""Is this machine ready: host checks (GPU, RAM, disk, CPU, ffmpeg), trainer checks (checkout, its python,
model files), and the one home of every NVML call (``nvml``), which the run's sampler shares
(see docs/architecture.md).
"""
