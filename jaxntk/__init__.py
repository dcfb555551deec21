"""jaxntk: exact Taylor models of wide networks and good directions to escape the NTK regime.

The public API, re-exported from the modules (see DESIGN.md for the one-way data flow
targets → network → taylor → spectral → objectives → train → experiments → plots/cli).
"""

from jaxntk import network
from jaxntk.network import ACTIVATIONS, Prepared, TwoLayer

__all__ = [
    "ACTIVATIONS",
    "Prepared",
    "TwoLayer",
    "network",
]

__version__ = "0.1.0"
