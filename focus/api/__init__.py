"""The HTTP API: read routes over the projections, write routes that publish events."""

from focus.api.app import create_app
from focus.api.auth import mint_token
from focus.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app", "mint_token"]
