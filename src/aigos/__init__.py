"""AIGOS: identity and governance control plane for AI agents.

``pip install aigos`` is the light client (SDK and CLI); ``pip install "aigos[server]"`` adds the server.
"""

from aigos.__about__ import __version__

__all__ = ["__version__"]
