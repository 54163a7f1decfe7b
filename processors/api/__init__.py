"""The campaign query API and the live web view (issue 15), served by the worker on one port.

``query`` is pure (parameters -> a typed query or a 400 naming the parameter, campaign ids, rate
formulas); ``server`` is the aiohttp application over a :class:`server.CampaignSource`, which the
worker implements; ``auth`` checks the bearer tokens (``CRM_API_TOKEN``); ``openapi.yaml`` is the
contract; ``static/`` is the page.
"""
