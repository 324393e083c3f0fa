"""``textclf serve``: an HTTP JSON API for any textclf model (FastAPI + uvicorn).

:mod:`.app` (routes), :mod:`.batcher` (asyncio micro-batching of concurrent requests),
:mod:`.limits` (request limits and the strict body parser), :mod:`.metrics` (Prometheus text).
"""
