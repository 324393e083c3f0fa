"""The shared click options (:mod:`textclf.core.options`), re-exported for the CLI's modules."""

from textclf.core.options import FormatChoice, code_option, config_options, data_options, flag_overrides, trust_code_option

__all__ = ["FormatChoice", "code_option", "config_options", "data_options", "flag_overrides", "trust_code_option"]
