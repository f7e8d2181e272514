"""Files kohyawan writes and reads safely: atomic writes, sha256 digests, flock locks.
"""
