"""HTTP resources of pushtwisted: the app-server endpoint and shared helpers.

Modules: ``_util`` (JSON responses, the one error shape, the async render
edge), ``endpoint`` (``PUT /update/<token>`` and the endpoint listener's
``Site``), ``webpush`` (``POST /wpush/...`` and ``DELETE /m/<id>`` on that
listener), ``internal`` (the router listener), ``status`` (status, health,
metrics) and ``_site`` (the transport policy every listener shares).
"""

__all__: list[str] = []
