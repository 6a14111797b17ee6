"""cms's REST API: create_app(deps)/get_app() in cms.api.app, served by gunicorn through cms.api.serve."""
