"""Thin click commands, one per pipeline stage; the library in ``pipeline`` does the work."""
