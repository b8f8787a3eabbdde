"""Benchmarks of the AIGOS server; each module is a script (``.venv/bin/python bench/<name>.py``).

Shared pieces: ``bench._server`` starts and stops servers and reads their memory and CPU use;
``bench._load`` is the lean HTTP/1.1 keep-alive load client; ``bench.floor`` is the floor, a bare ASGI app
served by ``aigos serve``'s own launcher; ``bench._figures`` times a phase beside the floor and prints
figures, ratios and targets; ``bench._memory`` reads RSS process by process.
"""
