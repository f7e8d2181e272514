"""Files kohyawan writes and reads safely: atomic writes, sha256 digests, and which ffmpeg reads the media.
"""
