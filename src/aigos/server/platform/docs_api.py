"""Swagger UI at ``/docs``, served from installed files (no CDN, works offline).

Swagger UI's bundle and stylesheet come from the ``fastapi-offline`` package, which keeps them current;
only its static folder is used, because its own page inlines a script that the docs page's CSP forbids.
Our page's start-up script (``init.js``) is served beside them from this package.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static") / "swagger-ui"
#: The package and folder that hold ``swagger-ui-bundle.js`` and ``swagger-ui.css``.
SWAGGER_UI_FILES = ("fastapi_offline", "static")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>AIGOS API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body data-openapi-url="/openapi.json">
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/init.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    """The interactive API reference."""
    return HTMLResponse(_PAGE)


def static_files() -> StaticFiles:
    """The Swagger UI assets, to be mounted at ``/docs/static``: ours first, then the package's."""
    return StaticFiles(directory=STATIC_DIR, packages=[SWAGGER_UI_FILES])
