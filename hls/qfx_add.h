// qfx support header: two-operand element-wise ops: residual add y = out_T(a + b), sub y = out_T(a - b) and
// mul y = out_T(a * b). ap_fixed's plus, minus and mult types hold the exact result (qfx.fixed.kernels add, sub, mul);
// it is cast once to out_T.
#ifndef QFX_ADD_H_
#define QFX_ADD_H_
#include "qfx_types.h"

namespace qfx {

template <class a_T, class b_T, class out_T, unsigned N>
void add(const a_T a[N], const b_T b[N], out_T y[N]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Add)
    for (unsigned i = 0; i < N; i++) {
        y[i] = (out_T)(a[i] + b[i]);
    }
}

template <class a_T, class b_T, class out_T, unsigned N>
void sub(const a_T a[N], const b_T b[N], out_T y[N]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Sub)
    for (unsigned i = 0; i < N; i++) {
        y[i] = convert<out_T>(a[i] - b[i]);
    }
}

// A product of two variables: the one qfx kernel that needs real multipliers (DSP blocks when wide enough).
template <class a_T, class b_T, class out_T, unsigned N>
void mul(const a_T a[N], const b_T b[N], out_T y[N]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Mul)
    for (unsigned i = 0; i < N; i++) {
        y[i] = convert<out_T>(a[i] * b[i]);
    }
}

}  // namespace qfx
#endif
