"""The help formatter of every seqserve command: each option's help ends with its default."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`(default: X)` after each option's help, unless the help already says its default;
    flags read `(default: off)`. An option without a default says in words what not
    giving it means (a test holds every command to this)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or action.default == ():
            return text
        return super()._get_help_string(action) or text
