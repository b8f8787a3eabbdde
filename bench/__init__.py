"""Benchmarks of the AIGOS server; each module is a script (``.venv/bin/python bench/<name>.py``).

Shared pieces: ``bench._server`` starts and stops servers and reads their memory and CPU use;
``bench._load`` is the lean HTTP/1.1 keep-alive load client.
"""
