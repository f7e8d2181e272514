"""LoRA files for WAN models: header reading, key knowledge, verification and tensor tools.

Header-only parts (``io``, ``keys``, ``inspect``, ``verify``, ``metadata``) never import torch; the tensor
tools (``convert``, ``resize``, ``merge``, ``effect``, ``fabricate``) import it inside their functions.
"""
