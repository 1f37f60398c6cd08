// qfx support header: fully connected layer, y[o] = out_T(acc_T(b[o]) + sum_k x[k] * w[o][k]).
// The accumulator type CFG::accum_t is sized by qfx (interval analysis) so that no += can overflow or round; the
// only rounding/overflow is the final cast to out_T, exactly as qfx.fixed.ops.dense.
#ifndef QFX_DENSE_H_
#define QFX_DENSE_H_
#include "qfx_types.h"

namespace qfx {

// CFG: n_in, n_out, reuse_factor, multiplier_limit; types weight_t, bias_t, accum_t. Weights are row-major
// (n_out, n_in) integer codes of weight_t (w_C: a C integer type), biases codes of bias_t.
template <class in_T, class out_T, class CFG, class w_C, class b_C>
void dense(const in_T x[CFG::n_in], out_T y[CFG::n_out], const w_C w[CFG::n_out * CFG::n_in], const b_C b[CFG::n_out]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=w cyclic factor=CFG::multiplier_limit)
    QFX_PRAGMA(HLS ALLOCATION operation instances=mul limit=CFG::multiplier_limit)
QFX_LOOP(DenseOut)
    for (unsigned o = 0; o < CFG::n_out; o++) {
        typename CFG::accum_t acc = from_bits<typename CFG::bias_t>(b[o]);
    QFX_LOOP(DenseIn)
        for (unsigned k = 0; k < CFG::n_in; k++) {
            acc += x[k] * from_bits<typename CFG::weight_t>(w[o * CFG::n_in + k]);
        }
        y[o] = (out_T)acc;
    }
}

// Same without a bias: the accumulator starts at zero.
template <class in_T, class out_T, class CFG, class w_C>
void dense(const in_T x[CFG::n_in], out_T y[CFG::n_out], const w_C w[CFG::n_out * CFG::n_in]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=w cyclic factor=CFG::multiplier_limit)
    QFX_PRAGMA(HLS ALLOCATION operation instances=mul limit=CFG::multiplier_limit)
QFX_LOOP(DenseOut)
    for (unsigned o = 0; o < CFG::n_out; o++) {
        typename CFG::accum_t acc = 0;
    QFX_LOOP(DenseIn)
        for (unsigned k = 0; k < CFG::n_in; k++) {
            acc += x[k] * from_bits<typename CFG::weight_t>(w[o * CFG::n_in + k]);
        }
        y[o] = (out_T)acc;
    }
}

}  // namespace qfx
#endif
