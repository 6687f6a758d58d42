"""ECG lead conventions shared by every ecg-hub model and the feature extractor.

Signals are stored lead-major, shaped ``(leads, samples)``, in millivolts (mV). The canonical order
is the standard clinical 12-lead order. Different databases spell leads differently (``AVR``,
``avr``, ``DI``/``DII``/``DIII``, ``MLII``), so every name is mapped to its canonical spelling
before anything else looks at it.

This module only imports numpy: it is part of the Hub remote-code bundle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The standard 12 leads in clinical order (PTB-XL, CinC, CODE-15 all use this order).
STANDARD_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

#: MIMIC-IV-ECG order used by MERL and MELP (aVF before aVL).
MIMIC_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

#: The 8 independent leads used by ECG-JEPA (the other four limb leads are linear in I and II).
INDEPENDENT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")

#: Leads that can be computed from I and II by Einthoven's and Goldberger's laws.
DERIVABLE_LIMB_LEADS: tuple[str, ...] = ("III", "aVR", "aVL", "aVF")

# Spellings seen across PhysioNet databases, CODE-15, MIMIC and vendor exports.
_ALIASES: dict[str, str] = {
    "i": "I", "di": "I", "lead i": "I", "lead_i": "I", "l1": "I",
    "ii": "II", "dii": "II", "lead ii": "II", "lead_ii": "II", "l2": "II", "mlii": "II",
    "iii": "III", "diii": "III", "lead iii": "III", "lead_iii": "III", "l3": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
}
for _n in range(1, 7):
    _ALIASES[f"v{_n}"] = f"V{_n}"
    _ALIASES[f"lead v{_n}"] = f"V{_n}"
    _ALIASES[f"lead_v{_n}"] = f"V{_n}"


def canonical_lead_name(name: str) -> str:
    """Map one lead name to its canonical spelling (``"AVR"`` -> ``"aVR"``, ``"DII"`` -> ``"II"``).

    Raises:
        ValueError: if the name is not one of the 12 standard leads under any known spelling.
    """
    if not isinstance(name, str):
        raise ValueError(f"lead name must be a string, got {type(name).__name__} {name!r}")
    key = " ".join(name.strip().lower().split())
    canonical = _ALIASES.get(key)
    if canonical is None:
        raise ValueError(
            f"unknown lead name {name!r}: expected one of {', '.join(STANDARD_LEADS)} "
            "(accepted spellings include AVR/avr, DI/DII/DIII, lower case)"
        )
    return canonical


def canonicalize_leads(names: Sequence[str]) -> list[str]:
    """Canonical spelling of every lead in ``names`` (a list, tuple or array of names; a single string
    is one name); raises ``ValueError`` on unknown, repeated or non-string leads, and when ``names``
    is not a list of names at all (``None``, a number)."""
    if isinstance(names, str):
        names = [names]
    else:
        try:
            names = list(names)
        except TypeError:
            raise ValueError(
                f"leads must be a list of lead names, got {type(names).__name__} {names!r}"
            ) from None
    canonical = [canonical_lead_name(n) for n in names]
    seen: set[str] = set()
    for original, lead in zip(names, canonical):
        if lead in seen:
            raise ValueError(f"lead {lead!r} appears twice in the leads list (as {original!r}): {list(names)}")
        seen.add(lead)
    return canonical


def derive_limb_leads(signal: np.ndarray, leads: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Append the limb leads III, aVR, aVL, aVF that are missing but computable from I and II.

    Einthoven: III = II - I. Goldberger: aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2.

    Args:
        signal: ``(leads, samples)`` array in mV.
        leads: canonical names of the rows of ``signal``.

    Returns:
        ``(signal, leads)`` with the derivable missing leads appended as new rows (unchanged if I or
        II is missing, or if nothing is missing).
    """
    leads = list(leads)
    if "I" not in leads or "II" not in leads:
        return signal, leads
    lead_i = signal[leads.index("I")]
    lead_ii = signal[leads.index("II")]
    formulas = {
        "III": lambda: lead_ii - lead_i,
        "aVR": lambda: -(lead_i + lead_ii) / 2,
        "aVL": lambda: lead_i - lead_ii / 2,
        "aVF": lambda: lead_ii - lead_i / 2,
    }
    new_rows, new_names = [], []
    for name in DERIVABLE_LIMB_LEADS:
        if name not in leads:
            new_rows.append(formulas[name]())
            new_names.append(name)
    if not new_rows:
        return signal, leads
    return np.concatenate([signal, np.stack(new_rows).astype(signal.dtype, copy=False)], axis=0), leads + new_names
