"""A simulated musubi-tuner for rehearsals and tests: no model is loaded and no training happens.

It is a set of real processes with musubi-tuner's script names, argument parser (built from the
option tables in ``kohyawan/trainer/options``), console lines, failure text and output file names,
driven by a memory model of a virtual GPU (``KOHYAWAN_REHEARSE_GPU_GB``). See ``env.py`` for every
knob. ``musubi/`` is a stand-in trainer checkout (``standin.trainer_dir()``): pass it where a
musubi-tuner checkout is expected.
"""
