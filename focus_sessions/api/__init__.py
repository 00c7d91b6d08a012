"""The HTTP API: read routes over the projections, write routes that publish events."""

from focus_sessions.api.app import create_app
from focus_sessions.api.auth import mint_token
from focus_sessions.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app", "mint_token"]
