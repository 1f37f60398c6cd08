"""qfx: trainable fixed-point quantization for PyTorch, exported bit-exactly to HLS C++ and SystemVerilog.

The path for a model of your own::

    model = qfx.quantize_model(my_float_model, qfx.QFXConfig(weight_width=6), calib_data=x[:512])
    ...                                                    # train it as usual
    qfx.export(model, x[:1], "hls", "prj_hls")             # or "onnx" / "rtl"; qfx.save(model, x[:1], "m.pt")
"""
from qfx.errors import QfxError
from qfx.fixed import OVERFLOW_MODES, ROUNDING_MODES, FxFormat

__version__ = "0.1.0"

__all__ = ["FxFormat", "ROUNDING_MODES", "OVERFLOW_MODES", "QfxError", "__version__", "quantize_model", "QFXConfig",
           "export", "save"]

# torch is imported only when one of these is used
_LAZY = {"quantize_model": "qfx.nn.convert", "QFXConfig": "qfx.nn.convert", "export": "qfx.api", "save": "qfx.api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qfx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
