"""HTTP resources of pushtwisted: the app-server endpoint and shared helpers.

Modules: ``_util`` (JSON responses, the one error shape, the async render
edge) and ``endpoint`` (``PUT /update/<token>`` and its ``Site``).
"""

__all__: list[str] = []
