"""Load a standard Keras MobileNetV2 weights file (`.h5` or `.weights.h5`, with or without
its top) onto the IR backbone's layers.

The IR names its backbone ops after Keras' own block numbering (block 0 is Keras'
`expanded_conv`), so the map is by name: conv kernels and the BN that follows each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import MOBILENET_V2_STAGES


class BackboneWeightsError(MnasfpnError):
    """A backbone weights file that cannot be read or does not fit the backbone."""


def keras_layer_names() -> list[tuple[str, str, str]]:
    """(IR layer, Keras conv layer, Keras BN layer) for every backbone conv of MobileNetV2."""
    pairs = [("backbone_stem", "Conv1", "bn_Conv1")]
    blocks = sum(n for _, _, n, _ in MOBILENET_V2_STAGES)
    for b in range(blocks):
        keras_prefix = "expanded_conv" if b == 0 else f"block_{b}"
        parts = ("depthwise", "project") if b == 0 else ("expand", "depthwise", "project")
        for part in parts:
            pairs.append(
                (f"backbone_block{b}_{part}", f"{keras_prefix}_{part}", f"{keras_prefix}_{part}_BN")
            )
    return pairs


def _reference_model(path: Path, alpha: float, input_size: int) -> Any:
    """A Keras MobileNetV2 of the same width holding the file's weights."""
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    errors = []
    for include_top in (False, True):
        model = keras.applications.MobileNetV2(
            input_shape=(input_size, input_size, 3) if not include_top else (224, 224, 3),
            alpha=alpha,
            include_top=include_top,
            weights=None,
        )
        try:
            model.load_weights(str(path))
            return model
        except Exception as exc:
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    raise BackboneWeightsError(
        f"--backbone-weights {str(path)!r}: not a Keras MobileNetV2 (alpha {alpha}) weights "
        f"file, with or without top ({errors[0][:160]})"
    )


def load_backbone_weights(model: Any, path: Path | str, *, alpha: float, input_size: int) -> int:
    """Copy MobileNetV2 weights from `path` into the detector's backbone; returns how many
    layers were loaded. Errors are one line."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"--backbone-weights {str(path)!r}: file not found")
    if not (path.name.endswith(".h5") or path.name.endswith(".keras")):
        raise BackboneWeightsError(
            f"--backbone-weights {str(path)!r}: expected a Keras .h5 or .weights.h5 file"
        )
    reference = _reference_model(path, alpha, input_size)
    loaded = 0
    for ir_name, conv_name, bn_name in keras_layer_names():
        target = model.get_layer(ir_name)
        src_conv = reference.get_layer(conv_name)
        src_bn = reference.get_layer(bn_name)
        for dst, src in ((target.conv, src_conv), (target.bn, src_bn)):
            have = [tuple(w.shape) for w in dst.get_weights()]
            want = [tuple(w.shape) for w in src.get_weights()]
            if have != want:
                raise BackboneWeightsError(
                    f"--backbone-weights {str(path)!r}: layer {src.name} has shapes {want}, "
                    f"the backbone's {ir_name} needs {have} (a different --alpha?)"
                )
            dst.set_weights(src.get_weights())
        loaded += 1
    return loaded
