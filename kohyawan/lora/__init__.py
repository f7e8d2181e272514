"""LoRA files for WAN models: header reading, key knowledge, verification and tensor tools.

Header-only parts (``io``, ``keys``, ``inspect``, ``verify``, ``metadata``, ``stamp``) never import torch;
``fabricate`` writes with numpy; the tensor tools (``convert``, ``resize``, ``merge``, ``effect``, with
``tensors`` and ``svd``) import torch inside their functions. See docs/architecture.md.
"""
