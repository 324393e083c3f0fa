"""textclf: train, tune, compare and serve text classifiers behind one Predictor."""

from textclf.predictor import Predictor, load_predictor

__all__ = ["Predictor", "load_predictor"]
__version__ = "0.1.0"
