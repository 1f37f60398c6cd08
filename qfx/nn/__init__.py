"""Trainable fixed-point layers (learned binary points, K-hot weights) with a bit-exact integer mode."""
from qfx.nn.convert import QFXConfig, calibrate, calibration, fold_bn, format_table, quantize_model, report_formats
from qfx.nn.exact import get_mode, mode, set_mode
from qfx.nn.extra_layers import (
    QAdaptiveAvgPool2d, QAdaptiveMaxPool2d, QClip, QConstScale, QGlobalAvgPool2d, QGroupNorm, QLayerNorm, QPReLU, QSum,
)
from qfx.nn.layers import (
    QAdd, QAvgPool2d, QBatchNorm1d, QBatchNorm2d, QClippedReLU, QConv2d, QConvTranspose1d, QConvTranspose2d, QFlatten, QLinear, QMaxPool2d, QModule,
    QReLU, QuantInput,
)
from qfx.nn.op_layers import (
    QActivation, QCat, QMatMul, QMul, QResize2d, QSoftmax, QSub, QUpsample, QUpsampleBilinear, QZeroPad2d,
)
from qfx.nn.embedding import QEmbedding
from qfx.nn.quant import FixedQuant, fake_quant

__all__ = [
    "FixedQuant", "fake_quant", "QuantInput", "QLinear", "QConv2d", "QBatchNorm1d", "QBatchNorm2d", "QReLU",
    "QClippedReLU", "QAdd", "QMaxPool2d", "QAvgPool2d", "QGlobalAvgPool2d", "QFlatten", "QModule", "set_mode", "get_mode", "mode",
    "QFXConfig", "quantize_model", "calibrate", "calibration", "fold_bn", "report_formats", "format_table",
    "QSub", "QMul", "QCat", "QUpsample", "QZeroPad2d", "QActivation", "QSoftmax", "QConstScale", "QClip", "QPReLU",
    "QAdaptiveAvgPool2d", "QAdaptiveMaxPool2d", "QLayerNorm", "QConvTranspose2d", "QConvTranspose1d", "QSum", "QGroupNorm",
    "QUpsampleBilinear", "QResize2d", "QMatMul", "QEmbedding",
]
