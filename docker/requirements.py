"""Print the pinned requirements of textclf (core + the given extras) from pyproject.toml, one per line.

Container builds install these before copying src/, so the dependency layer is rebuilt only
when pyproject.toml changes:  python docker/requirements.py bert > /tmp/requirements.txt
Extras may also be given comma-separated (``lstm,postgres``, docker/Dockerfile's EXTRAS; empty: the core only).
Self-references such as ``textclf[lstm,bert]`` are expanded; ``--no-core`` leaves the core out.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], core: bool = True) -> list[str]:
    """Core dependencies plus those of ``extras`` (recursively), in first-seen order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", [])) if core else []
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            sys.exit(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            m = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.replace(" ", ""))
            if m:
                todo.extend(m.group(1).split(","))
            else:
                out.append(req)
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    args = sys.argv[1:]
    core = "--no-core" not in args
    extras = [e for a in args if a != "--no-core" for e in a.split(",") if e.strip()]
    here = Path(__file__).resolve().parent
    pyproject = here.parent / "pyproject.toml"
    print("\n".join(requirements(pyproject, extras, core)))
