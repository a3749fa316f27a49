"""The MobileNetV2 variants the trainer can build, by MindCV's registered names.

This module imports nothing beyond the standard library: the operator imports it to validate job
specs, and the operator's image has no MindSpore.

The names are exactly those MindCV 0.3.0 registers in ``mindcv/models/mobilenetv2.py`` (a unit test
compares them with MindCV's registry). MindCV is irregular here and we keep its spelling so that
configs and checkpoints move between the two unchanged:

* widths 1.4, 1.0 and 0.75 have a plain name for 224x224 (``mobilenet_v2_140``, ``mobilenet_v2_100``,
  ``mobilenet_v2_075``); widths 1.3, 0.5 and 0.35 only have ``_224`` names (``mobilenet_v2_130_224``,
  ``mobilenet_v2_050_224``, ``mobilenet_v2_035_224``);
* the reduced-resolution names ``_192/_160/_128/_96`` exist for widths 1.0, 0.75, 0.5 and 0.35, not
  for 1.4 and 1.3.

The resolution in a name is only the input size the variant was meant for: the network itself ends
in global average pooling and takes any input size; all names of one width are the same network.
"""

from __future__ import annotations

import difflib

#: Input resolution of the names without a resolution suffix.
DEFAULT_RESOLUTION = 224

# (width multiplier, resolution) of every registered name, in MindCV's registration order.
_VARIANTS: dict[str, tuple[float, int]] = {
    "mobilenet_v2_140": (1.4, 224),
    "mobilenet_v2_130_224": (1.3, 224),
    "mobilenet_v2_100": (1.0, 224),
    "mobilenet_v2_100_192": (1.0, 192),
    "mobilenet_v2_100_160": (1.0, 160),
    "mobilenet_v2_100_128": (1.0, 128),
    "mobilenet_v2_100_96": (1.0, 96),
    "mobilenet_v2_075": (0.75, 224),
    "mobilenet_v2_075_192": (0.75, 192),
    "mobilenet_v2_075_160": (0.75, 160),
    "mobilenet_v2_075_128": (0.75, 128),
    "mobilenet_v2_075_96": (0.75, 96),
    "mobilenet_v2_050_224": (0.5, 224),
    "mobilenet_v2_050_192": (0.5, 192),
    "mobilenet_v2_050_160": (0.5, 160),
    "mobilenet_v2_050_128": (0.5, 128),
    "mobilenet_v2_050_96": (0.5, 96),
    "mobilenet_v2_035_224": (0.35, 224),
    "mobilenet_v2_035_192": (0.35, 192),
    "mobilenet_v2_035_160": (0.35, 160),
    "mobilenet_v2_035_128": (0.35, 128),
    "mobilenet_v2_035_96": (0.35, 96),
}

#: Every supported model name (MindCV's names), in MindCV's registration order.
MODEL_NAMES: tuple[str, ...] = tuple(_VARIANTS)


class UnknownModelError(ValueError):
    """A model name that is not one of :data:`MODEL_NAMES`."""


def _alias(name: str) -> str | None:
    """The registered spelling of a 224x224 name written the other way, if any.

    ``mobilenet_v2_035`` -> ``mobilenet_v2_035_224`` (MindCV only has the suffixed name) and
    ``mobilenet_v2_075_224`` -> ``mobilenet_v2_075`` (older MindCV configs use that spelling).
    """
    if f"{name}_224" in _VARIANTS:
        return f"{name}_224"
    if name.endswith("_224") and name.removesuffix("_224") in _VARIANTS:
        return name.removesuffix("_224")
    return None


def unknown_name_hint(name: str) -> str:
    """``"; did you mean ...? Supported (MindCV's names): ..."`` for an unsupported name."""
    close = difflib.get_close_matches(str(name), MODEL_NAMES, n=3, cutoff=0.6)
    alias = _alias(str(name))
    if alias:
        close = [alias] + [c for c in close if c != alias][:2]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return f"{hint} Supported (MindCV's names): {', '.join(MODEL_NAMES)}"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a supported model name.

    Raises:
        UnknownModelError: naming the closest valid names, e.g. ``mobilenet_v2_035`` ->
            ``mobilenet_v2_035_224`` (MindCV has no plain name for that width).
    """
    if name in _VARIANTS:
        return name
    raise UnknownModelError(f"unknown model {name!r}{unknown_name_hint(name)}")


def model_variant(name: str) -> tuple[float, int]:
    """Width multiplier and intended input resolution of a model name.

    Example: ``model_variant("mobilenet_v2_075_160") == (0.75, 160)``.

    Raises:
        UnknownModelError: when ``name`` is not in :data:`MODEL_NAMES`.
    """
    return _VARIANTS[check_model_name(name)]
