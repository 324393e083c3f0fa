"""The families that ship with textclf; importing this package registers them (no heavy imports).

Each subpackage holds everything only that family uses; its ``__init__`` declares the
:class:`textclf.core.registry.Family` (names of the train function and Predictor, imported lazily).
"""

from textclf.families import bert, embeddings, fasttext, lstm, setfit  # noqa: F401  (each registers its family)
