"""The queen's routing table, in order: the route modules an idle queen serves from at once, imported with it,
and lazy groups (`lazy_routes`) for the APIs most queens never or rarely see, imported on their first request.

Each group names the paths it claims: the exact paths of its module's routes, or a prefix above them
(`tests/queen/test_route_table.py` checks both ways, and that no other route lies under a group's paths).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from rbee.queen import admin_routes, hive_routes, infill_routes, openai_routes, spread_routes, web_routes
from rbee.queen.lazy_routes import LazyRoutes

__all__ = ["LAZY", "OLLAMA_PATHS", "routes"]

ANTHROPIC = LazyRoutes("rbee.queen.anthropic_routes", ("/v1/messages",))
RESPONSES = LazyRoutes("rbee.queen.responses_routes", ("/v1/responses",))
RERANK = LazyRoutes("rbee.queen.rerank_routes", ("/v1/rerank", "/rerank", "/v2/rerank"))
AUDIO = LazyRoutes("rbee.queen.audio_routes", ("/v1/audio",))
IMAGES = LazyRoutes("rbee.queen.image_routes", ("/v1/images",))
OLLAMA = LazyRoutes("rbee.queen.ollama_routes", ("/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat",
                                                 "/api/generate", "/api/embed", "/api/embeddings"))
OLLAMA_MODELS = LazyRoutes("rbee.queen.ollama_models", ("/api/pull", "/api/delete"))
CATALOG = LazyRoutes("rbee.queen.catalog_routes", ("/v1/storage", "/v1/catalog"))
KEYS = LazyRoutes("rbee.queen.key_routes", ("/v1/keys", "/v1/usage", "/v1/audit"))
SETTINGS = LazyRoutes("rbee.queen.settings_routes", ("/v1/settings",))
OPENAPI = LazyRoutes("rbee.queen.openapi", ("/openapi.json",))
SHARES = LazyRoutes("rbee.queen.share_routes", ("/v1/hive/shares",))
LAZY = (ANTHROPIC, RESPONSES, RERANK, AUDIO, IMAGES, OLLAMA, OLLAMA_MODELS, CATALOG, KEYS, SETTINGS, OPENAPI, SHARES)

OLLAMA_PATHS = frozenset({*OLLAMA.paths, *OLLAMA_MODELS.paths})
"""Every path of the Ollama API (exact: the Ollama port serves these and `/`, nothing else)."""


def routes() -> list[BaseRoute]:
    """The table for one app (the lazy groups are shared: what they import is the same for every app)."""
    return [*openai_routes.routes, ANTHROPIC, RESPONSES, RERANK, AUDIO, IMAGES, *infill_routes.routes, OLLAMA,
            OLLAMA_MODELS, CATALOG, *hive_routes.routes, KEYS, SETTINGS, *admin_routes.routes, OPENAPI,
            *web_routes.routes, SHARES, *spread_routes.routes]
