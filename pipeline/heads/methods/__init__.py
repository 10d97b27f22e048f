"""The detectors, one module each: the module's name is the head's name (``train.head``).

Each module registers one ``nsnet.heads.method.Method`` in ``nsnet.registry.METHODS``; the
names are read from this folder without importing the modules (docs/heads.md, "Adding a
detector"). Keep this file free of imports.
"""
