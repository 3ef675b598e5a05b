"""Argument types shared by the commands."""
from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """A float flag: nan and inf are refused by the parser (they reached the solvers as values)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
    return v


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def plot_path(text: str) -> str:
    """A --plot file name: checked when the flags are read, not after the work is done."""
    if not text.lower().endswith(PLOT_SUFFIXES):
        raise argparse.ArgumentTypeError(f"{text}: use a .png, .svg or .pdf name")
    return text
