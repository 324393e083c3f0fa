"""What the images, the Makefile and the SLURM scripts ask the family registry (nothing there lists families).

    python -m textclf.cli.container train [FLAGS...]   the image's ``train`` (docker/entrypoint.sh execs this)
    python -m textclf.cli.container tune [FLAGS...]    the same through ``textclf tune``
    python -m textclf.cli.container show train|tune [FLAGS...]   print that command, run nothing
    python -m textclf.cli.container describe [--code FILE] NAME  one line for the Makefile:
                                                        FAMILY EXTRAS BASE ENV_VAR...  (EXTRAS "-" when none;
                                                        BASE torch when the family requires torch, else python)
    python -m textclf.cli.container family [--code FILE] [--searchable] NAME   the family's name (slurm/tune.sh)
    python -m textclf.cli.container check              docker build: the image's family has its dependencies

NAME is a family (``textclf families``) or the subproject folder it came from (fasttext, allennlp,
bert_classification). ``train``/``tune`` read the environment:

    TEXTCLF_FAMILY  the family (each image sets its own)     DATA_DIR   train.csv, valid.csv [, test.csv] (/data)
    OUTPUT_DIR      the model directory (/models/FAMILY)     CODE       a plug-in file, passed on as --code CODE
    and the family's own variables (``Family.env``: BATCH_SIZE, EPOCHS, N_TRIALS, ...), each as --set KEY=VALUE.

The command is ``python <subproject>/train.py ...`` for a family with a subproject folder (the
command a host runs), else ``textclf [--code CODE] train|tune FAMILY ...``; it is printed first,
shell-quoted, and the extra FLAGS go last (so they win over the variables).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from textclf.core.errors import ConfigError, TextclfError
from textclf.core.registry import Family, all_families, get_family, load_code

USAGE = __doc__.split("\n\n")[0]


def resolve(name: str, searchable: bool = False) -> Family:
    """The family called ``name``, or whose subproject folder is ``name``; a one-line error lists the known ones."""
    known = all_families()
    family = known.get(name) or next((f for f in known.values() if f.subproject == name), None)
    if family is None:
        get_family(name)  # raises: unknown family, lists the known ones
    if searchable and not family.searchable:
        names = [f"{n} ({f.subproject})" if f.subproject and f.subproject != n else n
                 for n, f in known.items() if f.searchable]
        raise ConfigError(f"family {family.name!r} has no search space to tune; families with one: {', '.join(names)}")
    return family


def extras(family: Family) -> list[str]:
    """The pip extras of the family's image: its own, plus ``postgres`` (shared Optuna storage) when it is searchable."""
    return [e for e in (family.extra, "postgres" if family.searchable else None) if e]


def describe(family: Family) -> str:
    """``FAMILY EXTRAS BASE ENV_VAR...``: what ``make build_%``/``train_%_docker`` need, on one line."""
    base = "torch" if "torch" in family.requires else "python"
    return " ".join([family.name, ",".join(extras(family)) or "-", base, *family.env])


def command(mode: str, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The train (``mode="train"``) or tune command the image runs, built from ``env`` (default: os.environ)."""
    env = dict(os.environ if env is None else env)
    name = env.get("TEXTCLF_FAMILY")
    if not name:
        raise ConfigError("TEXTCLF_FAMILY is not set: name a family (textclf families), or run a command instead")
    code = env.get("CODE") or None
    if code:
        load_code(code)
    family = resolve(name)
    data = Path(env.get("DATA_DIR") or "/data")
    for split in ("train", "valid"):
        if not (data / f"{split}.csv").is_file():
            raise ConfigError(f"{data / split}.csv not found; mount the data folder, e.g. -v $PWD/data/tweets_sentiment:/data:ro")
    flags = ["--train_path", str(data / "train.csv"), "--valid_path", str(data / "valid.csv")]
    if (data / "test.csv").is_file():
        flags += ["--test_path", str(data / "test.csv")]
    flags += ["--output_dir", env.get("OUTPUT_DIR") or f"/models/{family.name}"]
    for var, key in family.env.items():
        if env.get(var):
            flags += ["--set", f"{key}={env[var]}"]
    script = Path(f"{family.subproject}/train.py") if family.subproject else None
    if mode == "train" and not code and script and script.is_file():
        return ["python", str(script), *flags, *args]
    return ["textclf", *(["--code", code] if code else []), mode, family.name, *flags, *args]


def run(cmd: list[str]) -> None:
    """Print ``cmd`` (pasteable), then run it: exec a script, or call the textclf CLI in this process."""
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if cmd[0] != "textclf":
        os.execvp(cmd[0], cmd)
    from textclf.cli import cli

    cli.main(args=cmd[1:], prog_name="textclf")


def _options(args: list[str], usage: str) -> tuple[list[str], bool, str]:
    """``[--code FILE]... [--searchable] NAME`` -> (code files, searchable, NAME)."""
    code, searchable, rest = [], False, []
    it = iter(args)
    for a in it:
        if a == "--code":
            code.append(next(it, ""))
        elif a.startswith("--code="):
            code.append(a.split("=", 1)[1])
        elif a == "--searchable":
            searchable = True
        else:
            rest.append(a)
    if len(rest) != 1 or not all(code):
        raise ConfigError(f"usage: python -m textclf.cli.container {usage}")
    for path in code:
        load_code(path)
    return code, searchable, rest[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m textclf.cli.container SUBCOMMAND ...`` (see the module's docstring); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    what = args.pop(0) if args else ""
    try:
        if what in ("train", "tune"):
            run(command(what, args))
        elif what == "show" and args and args[0] in ("train", "tune"):
            print(shlex.join(command(args[0], args[1:])))
        elif what == "describe":
            print(describe(resolve(_options(args, "describe [--code FILE] NAME")[2])))
        elif what == "family":
            _, searchable, name = _options(args, "family [--code FILE] [--searchable] NAME")
            print(resolve(name, searchable).name)
        elif what == "check":
            name = os.environ.get("TEXTCLF_FAMILY", "")
            try:
                family = resolve(name)
            except ConfigError:
                print(f"image family {name!r} is not registered here: run it with CODE=<the plug-in file that registers it>")
                return 0
            family.check_installed()
            print(f"image family {family.name}: dependencies installed")
        else:
            print(USAGE, file=sys.stderr)
            return 0 if what in ("-h", "--help", "help") else 2
    except TextclfError as exc:
        print(f"textclf: {exc.format_message()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
