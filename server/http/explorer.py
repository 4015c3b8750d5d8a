"""The API explorer at ``/schema``: Swagger UI served by this server, not from a CDN.

Litestar's Swagger page loads its script, style sheet and icon from jsDelivr by
default, which leaves a blank page offline or behind a strict proxy. The assets
come from the ``swagger-ui-bundle`` package (Swagger UI's own distribution files,
installed with the server) and are served under :data:`ASSETS_PATH`.
"""

from __future__ import annotations

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS_PATH = "/schema-assets"


def explorer_plugin() -> SwaggerRenderPlugin:
    """Swagger UI whose every asset is served by this server."""
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def explorer_assets() -> Router:
    """The Swagger UI distribution files, cacheable for a day (they change only with the package)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[str(swagger_ui_path)],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86400, public=True),
        name="explorer-assets",
    )
