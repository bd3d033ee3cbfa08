"""The HTTP layer: routers (one per resource), dependencies and the error table."""
