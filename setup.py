# Metadata and options live in setup.cfg. This file only adds the two top-level data folders
# (templates/, profiles/) as packages inside kohyawan (kohyawan/_templates, kohyawan/_profiles), which setup.cfg's find: cannot express.
from setuptools import find_packages, setup

setup(packages=find_packages(include=["kohyawan", "kohyawan.*"]) + ["kohyawan._templates", "kohyawan._profiles"])
