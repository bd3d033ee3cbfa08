"""The web console served at ``/console``: a static page (``static/``) that keeps the
API key in the browser's sessionStorage and fetches HTML fragments rendered here
(``templates/``, Jinja2) and JSON (``api/console_api.py``) with the ``X-API-Key``
header. See docs/server.md, "Console"."""
