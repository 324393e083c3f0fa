"""The one place families, data formats and readers are found: ``catalogue`` registries plus entry points.

A *family* is a :class:`Family` object registered under its name. The built-in ones
(``fasttext``, ``lstm``, ``bert``, ``embeddings``, ``setfit``) register when :mod:`textclf.families` is imported; an
installed package registers more through the ``textclf_families`` entry-point group, and a
user's file registers them with :func:`register_family` (``textclf train --code my.py ...``).
Data *formats* work the same way (``textclf_formats`` group, :func:`register_format`): a
:class:`Format` names what it can do (read labelled data, give the texts to predict, write
predictions, write labelled data) and the file extensions it claims; every command's format
choices, the extension -> format detection and the reading and writing dispatch go through it.
A *reader* (``data.reader=NAME``, ``textclf_readers`` group, :func:`register_reader`) is a format
that can only read labelled data. Model *kinds*
that are built by a command instead of trained (``ensemble``, :mod:`textclf.services.compare.ensemble`;
``cascade``, :mod:`textclf.services.compare.cascade`) only
name their Predictor (``kinds``, :func:`kind_predictor`), so ``load_predictor`` knows them while
``textclf train`` and ``textclf families`` do not list them.

Why catalogue: it is what spaCy and thinc use for exactly this (named functions from code,
files and installed packages); entry points come with it, so a pip-installed plug-in needs
no import by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.resources
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import catalogue

from textclf.core.errors import ConfigError, TextclfError
from textclf.core.jsonfiles import read_json, user_config

families = catalogue.create("textclf", "families", entry_points=True)
#: data formats by name (:class:`Format`; more through the ``textclf_formats`` entry-point group)
formats = catalogue.create("textclf", "formats", entry_points=True)
#: the ``textclf_readers`` entry-point group: a reader function each, read as a :class:`Format` that can only ``read``
readers = catalogue.create("textclf", "readers", entry_points=True)
#: model kinds that load like a family's models but are built by a command, not by ``textclf train``
#: (kind -> Predictor class or ``"module:Class"``; more through the ``textclf_kinds`` entry-point group)
kinds = catalogue.create("textclf", "kinds", entry_points=True)
kinds.register("ensemble", func="textclf.services.compare.ensemble:EnsemblePredictor")
kinds.register("cascade", func="textclf.services.compare.cascade:CascadePredictor")

#: the core's search -> refit -> evaluate -> meta.json flow over a v2 family's ``fit`` (resolved on first use)
FIT_FLOW = "textclf.core.fit_flow:train_family"
#: the config blocks the core reads for every v2 family; the family's own ``config`` is merged over them
CORE_DEFAULTS: dict = {
    "seed": 13,
    "data": {"format": None, "text_column": "text", "label_column": "label", "reader": None, "task": "auto",
             "label_separator": None},
    "search": {"n_trials": 0, "timeout": None, "n_jobs": 1, "storage": None, "study_name": None, "metric": None,
               "refit": True, "start_params": []},
    "decision": {"threshold": 0.5, "at_least_one": False},
    "calibration": "none",  # none | temperature | bcts | isotonic | auto, fitted on valid (textclf.core.calibration)
}
#: ``search.metric: null`` means the task's default (:func:`textclf.core.fit_flow.train_family` fills it in)
DEFAULT_METRICS = {"multiclass": "macro_f1", "multilabel": "micro_f1"}


def defaults_for(name: str, family_config: dict) -> dict:
    """A v2 family's full default config: :data:`CORE_DEFAULTS` with the family's own blocks merged over them."""
    cfg = copy.deepcopy(CORE_DEFAULTS)
    cfg["search"]["study_name"] = name
    for key, value in family_config.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def package_config(package: str, filename: str = "config.json") -> Traversable:
    """A family's default config shipped in its own package: ``Family(config=package_config(__name__))``.

    Found through :mod:`importlib.resources`, so it is the same file in a checkout, a wheel or a zip.
    """
    return importlib.resources.files(package) / filename


#: ``meta.json`` key naming the plug-in file a model directory carries (relative to the directory)
PLUGIN_META_KEY = "plugin_code"


def _resolve(ref: Any) -> Any:
    """A ``"module:attr"`` string imported on first use, or the object itself."""
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return ref


@dataclass
class Option:
    """A family-specific command-line flag that sets one config key (``None`` means not given)."""

    flag: str
    key: str | None
    type: Any = None
    help: str = ""
    is_flag: bool = False
    secondary: str | None = None  # ``--no-x`` name for boolean on/off flags

    @property
    def dest(self) -> str:
        """The click parameter name of the flag."""
        return self.flag.lstrip("-").split("/")[0].replace("-", "_")


@dataclass
class Family:
    """Everything textclf needs to know about one model family.

    **Contract v2** (what a new family implements): ``fit(cfg, splits, context) -> Predictor`` and,
    when searchable, ``space(cfg, trial) -> {dotted config key: value}`` (or a JSON ``search_space``);
    the core (:mod:`textclf.core.fit_flow`) owns search, refit, evaluation and meta.json, and fills
    the ``seed``/``data``/``search`` config blocks (:data:`CORE_DEFAULTS`) under the family's own
    ``config``. ``packages`` are the distributions whose versions meta.json records. ``fork_trials``: training
    cannot be interrupted from Python, so under ``search.timeout`` trials run in a forked child killed
    at the deadline (:mod:`textclf.core.deadline`). ``check(cfg)`` (optional) rejects a bad config with
    a one-line ConfigError before anything trains (it may fill a setting whose default derives from
    another, such as the BiLSTM's ``search.metric: null`` -> ``train.metric``). ``pruner(cfg) -> optuna
    pruner`` (optional) prunes the search's trials on what ``fit`` reports per epoch
    (``context.report``); without it the study gets Optuna's default pruner. ``prepare(cfg, splits)
    -> cfg`` (optional) completes the config from the data before anything fits (the embeddings
    family adds the choice of training files to its space and its configured point to
    ``search.start_params``).

    **Contract v1** (the built-in families that run their own flow): ``train(cfg, splits,
    output_dir, resume) -> model directory``, ending with :func:`textclf.core.training.finish_run`.

    ``train``, ``fit``, ``space``, ``check``, ``prepare``, ``pruner`` and ``predictor`` may be the
    objects themselves or ``"module:attr"`` strings, imported only when used (so listing families never imports torch). ``train`` has the
    signature ``train(cfg, splits, output_dir, resume=False) -> Path`` and returns the model
    directory; ``predictor`` is a :class:`textclf.core.predictor.Predictor` subclass whose ``kind``
    is the family's name. ``config`` is the default config and the schema of every override: a dict,
    a path, or a package resource (the built-in families: ``package_config(__name__)``, their own
    ``config.json``); ``None`` makes the user's ``config/<name>.json`` the whole default. A user's
    ``config/<name>.json`` (:func:`textclf.core.jsonfiles.user_config`) is merged over it, partial or
    full, with the same strict keys as ``--config`` (:func:`textclf.core.config.default_config`). ``search_space`` (optional) replaces
    ``config["search"]["space"]``. ``options`` are the family's own flags (each sets a config
    key), ``env`` maps the original repository's environment variables (``EPOCHS``, ...) to config
    keys for the containers, ``subproject`` is the thin entry-point folder (``fasttext/``, ...).
    ``onnx`` names the family's ONNX module (``export(predictor, path, opset)`` and
    ``load(model_dir, meta, session, path) -> Predictor``); ``commands`` maps the names of the
    family's own top-level commands (``textclf embed``, ``textclf sweep``) to their click commands
    as ``"module:attr"``; the CLI adds them. ``multilabel``: the family trains on multi-label data
    (its Predictor gives independent per-label probabilities); training one that does not on such
    data is a one-line error (:meth:`check_task`).
    ``max_length_key`` names the config key of the family's
    token limit (``encoder.max_length``), which ``textclf stats`` measures the data against (a null
    value there means the default encoder's own limit). ``explainer`` (optional) gives token
    attributions for ``textclf explain`` (:mod:`textclf.core.explanation`); without it, occlusion.
    """

    name: str
    train: Callable | str | None = None
    predictor: type | str | None = None
    description: str = ""
    kind: str = "model"
    config: dict | str | Path | Traversable | None = None
    search_space: dict | None = None
    requires: Sequence[str] = ()
    extra: str | None = None
    subproject: str | None = None
    options: Sequence[Option] = ()
    env: dict[str, str] = field(default_factory=dict)
    flag_hook: Callable[[dict], dict] | None = None
    onnx: str | None = None
    commands: dict[str, str] = field(default_factory=dict)
    fit: Callable | str | None = None
    space: Callable | str | None = None
    packages: Sequence[str] = ()
    fork_trials: bool = False
    check: Callable | str | None = None
    prepare: Callable | str | None = None
    pruner: Callable | str | None = None
    code_file: str | None = None
    multilabel: bool = False
    #: ``fit`` honours ``splits.train.weights`` (per-row sample weights): ``textclf distill`` then gives it soft labels
    weights: bool = False
    max_length_key: str | None = None
    explainer: Callable | str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"family {self!r}: a family needs a name")
        if not any(callable(f) or isinstance(f, str) for f in (self.train, self.fit)):
            raise ConfigError(f"family {self.name!r} does not implement the contract: give fit(cfg, splits, context) -> "
                              "Predictor (or a v1 train(cfg, splits, output_dir, resume) -> model directory)")
        if not (isinstance(self.predictor, type | str)):
            raise ConfigError(f"family {self.name!r} does not implement the contract: predictor must be a Predictor class")
        if isinstance(self.predictor, type):
            if not is_predictor_class(self.predictor):
                raise ConfigError(f"family {self.name!r} does not implement the contract: "
                                  f"{self.predictor.__name__} is not a textclf.core.predictor.Predictor subclass")

    # ------------------------------------------------------------------ dependencies
    def missing(self) -> list[str]:
        """The required modules that are not importable."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    @property
    def installed(self) -> bool:
        """Whether every required module is importable."""
        return not self.missing()

    def install_hint(self) -> str:
        """The ``pip install`` command that brings the missing dependencies."""
        if self.extra:
            return f"pip install 'textclf[{self.extra}]'"
        return "pip install " + " ".join(self.missing())

    def check_installed(self) -> None:
        """Raise a one-line error naming the fix when a dependency is missing."""
        missing = self.missing()
        if missing:
            raise TextclfError(f"family {self.name!r} needs {', '.join(missing)}, which is not installed; "
                               f"run: {self.install_hint()}")

    def check_task(self, task: str) -> None:
        """A one-line ConfigError when the data's ``task`` is multi-label and the family cannot train on it."""
        if task == "multilabel" and not self.multilabel:
            able = sorted(name for name, fam in all_families().items() if fam.multilabel)
            raise ConfigError(f"family {self.name!r} cannot train on multi-label data (label sets); "
                              f"families that can: {', '.join(able) or 'none'}; or set data.task=multiclass")

    # ------------------------------------------------------------------ parts
    def train_fn(self) -> Callable:
        """``train(cfg, splits, output_dir, resume=False) -> model dir``: the family's own (v1) or the core's flow over ``fit`` (v2)."""
        self.check_installed()
        if self.fit is not None:
            import functools

            return functools.partial(_resolve(FIT_FLOW), self)
        return _resolve(self.train)

    def fit_fn(self) -> Callable:
        """The family's ``fit(cfg, splits, context) -> Predictor`` (contract v2; imported on first use)."""
        self.check_installed()
        return _resolve(self.fit)

    def check_fn(self) -> Callable | None:
        """The family's ``check(cfg)`` run before any fit (contract v2), or None."""
        return None if self.check is None else _resolve(self.check)

    def prepare_fn(self) -> Callable | None:
        """The family's ``prepare(cfg, splits) -> cfg`` run after ``check`` (contract v2), or None."""
        return None if self.prepare is None else _resolve(self.prepare)

    def pruner_fn(self) -> Callable | None:
        """The family's ``pruner(cfg) -> optuna pruner`` for its search (contract v2), or None (Optuna's default)."""
        return None if self.pruner is None else _resolve(self.pruner)

    def space_fn(self) -> Callable | None:
        """The family's ``space(cfg, trial) -> params``, or None (the config's ``search.space`` is the space)."""
        return None if self.space is None else _resolve(self.space)

    def explainer_fn(self) -> Callable | None:
        """The family's ``explain(predictor, texts, targets) -> [Attribution] | None`` (:mod:`textclf.core.explanation`), or None."""
        return None if self.explainer is None else _resolve(self.explainer)

    def predictor_class(self) -> type:
        """The family's Predictor class (imported on first use)."""
        self.check_installed()
        return _resolve(self.predictor)

    def onnx_hook(self, name: str) -> Callable:
        """``export`` or ``load`` of the family's ONNX module (``onnx``: a module name, imported on first use)."""
        if not self.onnx:
            raise ConfigError(f"family {self.name!r} has no ONNX export")
        return _resolve(f"{self.onnx}:{name}")

    def config_path(self) -> Path | None:
        """Where the family's default config lives (None when the family gives it as a dict).

        A family without a ``config`` has the user's ``config/<name>.json`` as its default (None when there is none).
        """
        if isinstance(self.config, dict):
            return None
        if self.config is None:
            return user_config(self.name)
        return self.config if isinstance(self.config, Path) else Path(str(self.config))

    def override_path(self) -> Path | None:
        """The user's ``config/<name>.json`` merged over the default (None when there is none, or it is the default)."""
        if self.config is None:
            return None
        return user_config(self.name)

    def default_config(self) -> dict:
        """The family's own default config, with ``search_space`` (when given) as ``search.space``.

        The user's ``config/<name>.json`` (:meth:`override_path`) is merged over it by
        :func:`textclf.core.config.default_config`, where every run's config starts.
        """
        if isinstance(self.config, dict):
            cfg = copy.deepcopy(self.config)
        elif self.config is None:
            path = user_config(self.name)
            if path is None:
                raise ConfigError(f"family {self.name!r} has no default config: give Family(config=...) "
                                  f"or write config/{self.name}.json")
            cfg = read_json(path)
        else:
            cfg = read_json(self.config if isinstance(self.config, Traversable) else Path(self.config))
        if self.fit is not None:
            cfg = defaults_for(self.name, cfg)
        if self.search_space is not None:
            cfg.setdefault("search", {})["space"] = copy.deepcopy(self.search_space)
        return cfg

    @property
    def searchable(self) -> bool:
        """Whether the family has a search space (``textclf tune`` applies)."""
        if self.search_space is not None or self.space is not None:
            return True
        try:
            return bool(self.default_config().get("search", {}).get("space"))
        except TextclfError:
            return False


def register_family(family: Family) -> Family:
    """Register ``family`` under its name (a plug-in file calls this); returns it."""
    if not isinstance(family, Family):
        raise ConfigError(f"register_family expects a textclf.core.registry.Family, got {type(family).__name__}")
    families.register(family.name, func=family)
    return family


#: what a format can do: the :class:`Format` field that does it -> what it is used for (named in errors)
CAPABILITIES = {
    "read": "labelled data",
    "texts": "prediction input",
    "predictions": "predictions",
    "write": "labelled output",
}
#: the format used when no format claims a file's extension (fastText for labelled data, plain text to predict)
DEFAULT_FORMATS = {"read": "fasttext", "texts": "txt", "predictions": "txt", "write": "fasttext"}


@dataclass
class Format:
    """A data format: its name, the file extensions it claims and what it can do.

    Each part is the object itself or a ``"module:attr"`` string (imported on first use); a format
    has at least one of them:

    * ``read(source, text_column, label_column)`` -> iterable of ``(line_number, text, label)``:
      labelled data (``train``, ``evaluate``, ``leaderboard``, ``report``, ``ensemble``, ``tune-thresholds``);
    * ``texts(source, text_column)`` -> iterable of ``str``, one per input record, empty records
      included (``predict``: output record i belongs to input record i);
    * ``predictions(fh, labels)`` -> ``write(predicted, proba)``: opens a prediction file on the
      text stream ``fh`` (a header, say) for the classes ``labels`` and returns the function that
      writes one batch: the predicted labels and their probabilities (rows of ``proba`` in
      ``labels`` order; ``None`` when ``probabilities`` is false: the labels are all it needs).
      For a multi-label model it is opened as ``predictions(fh, labels, separator=...)`` and each
      predicted item is a tuple of labels (the built-in ones join them with ``separator``);
    * ``write(fh, dataset)``: writes a :class:`textclf.core.data.Dataset` (``make-dataset``).

    ``files``: the source is a file path (checked to exist and not be empty before reading,
    hashed by its bytes); false for a source such as ``db.sqlite::table``, which is passed as a
    string and hashed by the rows read. ``extensions`` (lower case, with the dot; the first is the
    one ``write`` gives its files) pick the format of a path when none is named: among the formats
    that can do the job and claim the extension, the default of :data:`DEFAULT_FORMATS`, else the
    one registered last; when none claims it, that default.
    """

    name: str
    extensions: Sequence[str] = ()
    read: Callable | str | None = None
    texts: Callable | str | None = None
    predictions: Callable | str | None = None
    write: Callable | str | None = None
    probabilities: bool = True
    files: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"format {self!r}: a format needs a name")
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions)
        for part in CAPABILITIES:
            value = getattr(self, part)
            if value is not None and not (callable(value) or isinstance(value, str)):
                raise ConfigError(f"format {self.name!r}: {part} must be a function or a \"module:attr\" string")
        if not any(getattr(self, part) is not None for part in CAPABILITIES):
            raise ConfigError(f"format {self.name!r} can do nothing: give it read, texts, predictions or write")

    def can(self, capability: str) -> bool:
        """Whether the format has the part ``capability`` (``read``, ``texts``, ``predictions``, ``write``)."""
        return getattr(self, capability) is not None

    def part(self, capability: str) -> Callable:
        """The function doing ``capability`` (imported on first use)."""
        if not self.can(capability):
            raise ConfigError(f"format {self.name!r} cannot be used for {CAPABILITIES[capability]}")
        return _resolve(getattr(self, capability))

    @property
    def suffix(self) -> str:
        """The extension of the files ``write`` makes (``.txt`` for fastText)."""
        return self.extensions[0] if self.extensions else f".{self.name}"


def register_format(fmt: Format) -> Format:
    """Register ``fmt`` under its name (a plug-in file calls this; a later registration replaces it); returns it."""
    if not isinstance(fmt, Format):
        raise ConfigError(f"register_format expects a textclf.core.registry.Format, got {type(fmt).__name__}")
    _load_builtin_formats()  # the built-ins come first (their order is the order of the choices), a plug-in's after
    formats.register(fmt.name, func=fmt)
    return fmt


def register_reader(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a reader ``fn(source, text_column, label_column) -> iterable of (line, text, label)``.

    The reader becomes the ``read`` part of the format ``name`` (a new format when there is none:
    it reads ``source`` as the string given, with no file checks: ``data.reader=NAME``).
    """
    def register(fn: Callable) -> Callable:
        _load_builtin_formats()
        existing = formats.get_all().get(name)
        if isinstance(existing, Format):
            register_format(dataclasses.replace(existing, read=fn))
        else:
            register_format(Format(name=name, read=fn, files=False))
        return fn

    return register


#: modules whose import registers the built-in formats and families (imported by name on first lookup,
#: so importing the registry imports no family: the spaCy ``registrations`` pattern)
REGISTRATIONS = ("textclf.core.data", "textclf.families")
#: the module registering the built-in formats
BUILTIN_FORMATS = "textclf.core.data"


def _load_builtins() -> None:
    for module in REGISTRATIONS:
        importlib.import_module(module)


def _load_builtin_formats() -> None:
    """Import the module registering the built-in formats (a no-op while it is being imported)."""
    import sys

    if BUILTIN_FORMATS not in sys.modules:
        importlib.import_module(BUILTIN_FORMATS)


def is_predictor_class(cls: type) -> bool:
    """Whether ``cls`` subclasses :class:`textclf.core.predictor.Predictor` (checked by name: the registry imports no model code)."""
    return any(c.__name__ == "Predictor" and c.__module__ == "textclf.core.predictor" for c in cls.__mro__)


def all_families() -> dict[str, Family]:
    """Every registered family by name: built-ins, entry points and loaded plug-in files."""
    _load_builtins()
    out = {}
    for name, fam in sorted(families.get_all().items()):
        if not isinstance(fam, Family):
            raise ConfigError(f"entry point textclf_families:{name} is not a textclf.core.registry.Family")
        out[name] = fam
    return out


def family_commands() -> dict[str, str]:
    """Every registered family's own commands: name -> ``"module:attr"`` of a click command."""
    out: dict[str, str] = {}
    for fam in all_families().values():
        out.update(fam.commands)
    return out


def get_family(name: str) -> Family:
    """The family called ``name``; an unknown name is a one-line error listing the known ones."""
    known = all_families()
    if name not in known:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(known)} "
                          "(a family from your own file needs --code FILE)")
    return known[name]


def all_kinds() -> dict[str, Any]:
    """Every predictor-only model kind (``ensemble``, ...) by name, as registered (class or ``"module:Class"``)."""
    return dict(sorted(kinds.get_all().items()))


def kind_predictor(kind: str) -> type | None:
    """The Predictor class of a predictor-only model kind (imported on first use), or None when unknown."""
    ref = all_kinds().get(kind)
    return None if ref is None else _resolve(ref)


def all_formats(capability: str | None = None) -> dict[str, Format]:
    """Every registered format by name, in registration order (built-ins first), or those that can do ``capability``.

    Reader functions of the ``textclf_readers`` entry-point group count as formats that only ``read``.
    """
    _load_builtins()
    out: dict[str, Format] = {name: Format(name=name, read=fn, files=False) for name, fn in readers.get_all().items()}
    for name, fmt in formats.get_all().items():
        if not isinstance(fmt, Format):
            raise ConfigError(f"entry point textclf_formats:{name} is not a textclf.core.registry.Format")
        out[name] = fmt
    if capability is None:
        return out
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown format capability {capability!r}; one of {', '.join(CAPABILITIES)}")
    return {name: fmt for name, fmt in out.items() if fmt.can(capability)}


def format_names(capability: str | None = None) -> list[str]:
    """The names of the formats that can do ``capability`` (all formats for None), in registration order."""
    return list(all_formats(capability))


def unknown_format_message(name: str, capability: str) -> str:
    """The one line that refuses format ``name`` for ``capability``, listing the formats that can do it."""
    return (f"unknown format {name!r} for {CAPABILITIES[capability]}; known: {', '.join(format_names(capability))} "
            "(a format from your own file needs --code FILE)")


def get_format(name: str, capability: str | None = None) -> Format:
    """The format called ``name`` (one that can do ``capability``); otherwise a one-line error listing the known ones."""
    known = all_formats(capability)
    if name not in known:
        if capability is None:
            raise ConfigError(f"unknown format {name!r}; known: {', '.join(known)} (a format from your own file needs --code FILE)")
        raise ConfigError(unknown_format_message(name, capability))
    return known[name]


def format_for_path(path: str | Path, capability: str) -> Format:
    """The format of ``path`` for ``capability`` from its extension (see :class:`Format`); the default when none claims it."""
    suffix = Path(str(path)).suffix.lower()
    known = all_formats(capability)
    default = DEFAULT_FORMATS[capability]
    claimants = [fmt for fmt in known.values() if suffix and suffix in fmt.extensions]
    if not claimants:
        return get_format(default, capability)
    return next((fmt for fmt in claimants if fmt.name == default), claimants[-1])


def get_reader(name: str) -> Callable:
    """The ``read`` part of the format called ``name`` (``data.reader``); an unknown name is a one-line error listing the known ones."""
    known = all_formats("read")
    if name not in known:
        raise ConfigError(f"data.reader: unknown reader {name!r}; known: {', '.join(sorted(known))} "
                          "(a reader from your own file needs --code FILE)")
    return known[name].part("read")


#: resolved path -> ((mtime_ns, size), family names it registered): a file is imported once per process
_LOADED_CODE: dict[str, tuple[tuple[int, int], list[str]]] = {}


def loaded_code() -> list[str]:
    """The resolved paths of every plug-in file this process imported (:func:`load_code`), sorted.

    A command that works in a fresh process (``leaderboard`` scores each model in one) imports them there too.
    """
    return sorted(_LOADED_CODE)


def load_code(path: str | Path) -> list[str]:
    """Import a user's Python file so the families, formats and readers it registers exist; returns its family names.

    Loading the same unchanged file again (the container entry point and the CLI it calls both see
    ``--code``) does not run it a second time; a file changed since is imported again.
    """
    import sys

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--code {path}: file not found")
    st = path.stat()
    signature, resolved = (st.st_mtime_ns, st.st_size), str(path.resolve())
    if resolved in _LOADED_CODE and _LOADED_CODE[resolved][0] == signature:
        return list(_LOADED_CODE[resolved][1])
    before = dict(families.get_all())
    module_name = f"textclf_plugin_{path.stem}_{abs(hash(resolved)) % 10**8}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--code {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except TextclfError:
        raise
    except Exception as exc:  # a user's file: report where it broke in one line
        raise ConfigError(f"--code {path}: importing it failed: {type(exc).__name__}: {exc}") from None
    new = [name for name, fam in families.get_all().items() if before.get(name) is not fam]  # a reload re-registers
    for name in new:
        fam = families.get(name)
        if isinstance(fam, Family) and fam.code_file is None:
            fam.code_file = resolved
    _LOADED_CODE[resolved] = (signature, new)
    return new
