"""kohyawan: WAN 2.2 video LoRAs with musubi-tuner, unattended."""

__version__ = "0.1.0"
