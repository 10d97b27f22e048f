"""The detector as an HTTP service: ``nsnet serve`` (FastAPI + uvicorn) and its web page.

``app.create_app`` builds the application around one loaded ``Detector``; ``batcher`` merges
concurrent requests into one model call; ``uploads`` parses multipart bodies in memory under
size limits. Nothing uploaded is ever written to disk.
"""
