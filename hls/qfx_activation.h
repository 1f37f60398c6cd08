// qfx support header: element-wise ops — relu, clip, and a plain cast (quant / flatten / reshape).
// Each is one cast to out_T of an exactly computed value, as qfx.fixed.ops.
#ifndef QFX_ACTIVATION_H_
#define QFX_ACTIVATION_H_
#include "qfx_types.h"

namespace qfx {

template <class in_T, class out_T, unsigned N>
void relu(const in_T x[N], out_T y[N]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Relu)
    for (unsigned i = 0; i < N; i++) {
        const in_T v = x[i];
        y[i] = convert<out_T>(v > 0 ? v : in_T(0));
    }
}

// y = out_T(min(max(x, lo), hi)). Bounds have in_T's width and binary point (codes of the input format in the IR)
// but default modes; the clipped value is cast straight to out_T, never converted into in_T.
template <class in_T, class bound_T, class out_T, unsigned N>
void clip(const in_T x[N], out_T y[N], const bound_T lo, const bound_T hi) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Clip)
    for (unsigned i = 0; i < N; i++) {
        const in_T v = x[i];
        y[i] = v > hi ? (out_T)hi : (v < lo ? (out_T)lo : convert<out_T>(v));
    }
}

template <class in_T, class out_T, unsigned N>
void cast(const in_T x[N], out_T y[N]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Cast)
    for (unsigned i = 0; i < N; i++) {
        y[i] = convert<out_T>(x[i]);
    }
}

}  // namespace qfx
#endif
