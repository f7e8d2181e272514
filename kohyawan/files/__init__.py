"""Files kohyawan writes and reads safely: atomic writes, sha256 digests, flock locks, TOML on every
supported Python, and which ffmpeg reads the media.
"""
