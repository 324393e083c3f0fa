"""``textclf families``: every registered family, whether it can run here, and where its config (and the user's override) lives."""

from __future__ import annotations

import json

import click

from textclf.cli.options import code_option


def family_rows() -> list[dict]:
    """One row per registered family: name, kind, description, installed, missing deps, config, override, origin."""
    from textclf.core.registry import all_families

    rows = []
    for name, fam in all_families().items():
        path, override = fam.config_path(), fam.override_path()
        rows.append({"name": name, "kind": fam.kind, "description": fam.description, "installed": fam.installed,
                     "missing": fam.missing(), "install": None if fam.installed else fam.install_hint(),
                     "config": str(path) if path else "(in the plug-in)",
                     "override": str(override) if override else None, "searchable": fam.searchable,
                     "plugin": fam.code_file, "subproject": fam.subproject, "multilabel": fam.multilabel,
                     "soft_labels": fam.weights})
    return rows


@click.command()
@code_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def families(as_json: bool) -> None:
    """List every model family: kind, description, whether its dependencies are installed, multi-label support, its config.

    The config is the family's default; a config/<family>.json override merged over it is named after it.
    """
    rows = family_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    kind_w = max(len(r["kind"]) for r in rows)
    for r in rows:
        status = "installed" if r["installed"] else f"missing {', '.join(r['missing'])} ({r['install']})"
        origin = f"  plug-in: {r['plugin']}" if r["plugin"] else ""
        override = f" + {r['override']}" if r["override"] else ""
        tasks = " [multi-class, multi-label" if r["multilabel"] else " [multi-class"
        tasks += ", soft labels]" if r["soft_labels"] else "]"
        click.echo(f"{r['name']:<{width}}  {r['kind']:<{kind_w}}  {r['description']}{tasks}")
        click.echo(f"{'':<{width}}  {'':<{kind_w}}  {status}; config: {r['config']}{override}{origin}")
