"""``textclf serve``: an HTTP JSON API for any textclf model (FastAPI + uvicorn).

:mod:`.app` (routes), :mod:`.batcher` (asyncio micro-batching of concurrent requests),
:mod:`.limits` (request limits and the strict body parser), :mod:`.protocol` (header and body
timeouts on uvicorn's h11 protocol), :mod:`.drain` (graceful SIGTERM), :mod:`.metrics` (Prometheus text).
"""
