"""ComfyUI side of kohyawan: API-format workflows for WAN 2.2 A14B, a small HTTP/WebSocket client,
and LoRA test grids (contact sheet + index.html).

``workflow``, ``strengths`` and ``validate`` are pure; ``client``, ``ws`` and ``grid``/``sheet`` touch
the network or the disk.
"""
