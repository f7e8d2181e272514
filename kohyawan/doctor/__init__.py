"""Is this machine ready: host checks (GPU, RAM, disk, CPU, ffmpeg) and trainer checks (checkout,
its python, model files).
"""
