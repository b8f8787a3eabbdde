"""Swagger UI at ``/docs``, served from files shipped in the package (no CDN, works offline)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static") / "swagger-ui"

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
    """The Swagger UI assets, to be mounted at ``/docs/static``."""
    return StaticFiles(directory=STATIC_DIR)
