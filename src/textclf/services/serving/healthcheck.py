"""A container HEALTHCHECK: ``python -m textclf.services.serving.healthcheck`` (docker/Dockerfile).

A serving container (``<image> serve``) writes its port to ``$TEXTCLF_HEALTH_FILE``; the check
asks ``GET /health`` on loopback and exits 0 (healthy) or 1. A container that is not serving
(``train``, ``tune``: batch jobs whose exit code is their health) has no such file and is
reported healthy. Standard library only, so it runs in every image.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    """Exit status of the check."""
    path = os.environ.get("TEXTCLF_HEALTH_FILE")
    if not path or not Path(path).is_file():
        return 0
    try:
        port = int(json.loads(Path(path).read_text())["port"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as answer:  # noqa: S310 - loopback
            return 0 if answer.status == 200 else 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
