"""The folder -> import name mapping of the one installed package (docs/development.md).

The repository keeps the folders its design names (``pipeline/`` the library, ``stages/`` the
commands); the wheel installs them as ``nsnet`` and ``nsnet.stages``. Every subpackage is found
from the folders, so adding one needs no edit here. Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {"nsnet": "pipeline", "nsnet.stages": "stages"}  # import name -> folder

packages = [name + sub[len(folder):] for name, folder in FOLDERS.items()
            for sub in [folder, *(f"{folder}.{p}" for p in find_packages(folder))]]
setup(packages=packages, package_dir=FOLDERS)
