"""The feature recipes, one module each: the module's name is the recipe's name.

Each module registers one ``nsnet.extraction.recipe.Recipe`` in ``nsnet.registry.RECIPES``; the
names are read from this folder without importing the modules (docs/development.md,
"Recipes"). Keep this file free of imports.
"""
