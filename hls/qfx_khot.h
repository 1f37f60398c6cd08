// qfx support header: K-hot layers without multipliers. Every weight code is a sum of at most K signed powers of
// two (its CSD digits); the weights arrive as a table of small integers, CFG::k_terms per weight: +(s+1) / -(s+1)
// for a digit +2^s / -2^s of the code, 0 for an unused slot. The input, cast to CFG::term_t, is shifted by
// s - CFG::w_frac per digit (left when >= 0, else right; exact in term_t, which qfx sizes for every partial sum),
// the terms of one weight are summed in term_t, each weight's sum is added to the lossless CFG::accum_t, and the
// output is one cast, exactly as qfx.fixed.ops.dense / conv2d. Under a pipeline the loops unroll over the constant
// table, so the hardware is constant shifts and adders.
#ifndef QFX_KHOT_H_
#define QFX_KHOT_H_
#include "qfx_types.h"

namespace qfx {

// acc + sum_j v[j] * w[o][j] for the N weights of output o (table row o), by shifts and adds only.
template <class in_T, class CFG, unsigned N, class tab_C>
typename CFG::accum_t khot_dot(const in_T v[N], const tab_C tab[], unsigned o, typename CFG::accum_t acc) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(KhotIn)
    for (unsigned j = 0; j < N; j++) {
        const typename CFG::term_t q = v[j];
        typename CFG::term_t t = 0;
    QFX_LOOP(KhotTerm)
        for (unsigned k = 0; k < CFG::k_terms; k++) {
            const int c = tab[(o * N + j) * CFG::k_terms + k];
            if (c == 0) continue;
            const int e = (c < 0 ? -c : c) - 1 - CFG::w_frac;  // shift of the term, left if >= 0
            if (c < 0) {
                t -= q << e;
            } else {
                t += q << e;
            }
        }
        acc += t;
    }
    return acc;
}

// CFG: n_in, n_out, k_terms, w_frac, reuse_factor; types bias_t, accum_t, term_t. b: codes of bias_t.
template <class in_T, class out_T, class CFG, bool has_bias, class tab_C, class b_C>
void khot_dense_impl(const in_T x[CFG::n_in], out_T y[CFG::n_out],
                     const tab_C tab[CFG::n_out * CFG::n_in * CFG::k_terms], const b_C b[CFG::n_out]) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(KhotOut)
    for (unsigned o = 0; o < CFG::n_out; o++) {
        typename CFG::accum_t acc = 0;
        if (has_bias) acc = from_bits<typename CFG::bias_t>(b[o]);
        y[o] = (out_T)khot_dot<in_T, CFG, CFG::n_in>(x, tab, o, acc);
    }
}

template <class in_T, class out_T, class CFG, class tab_C, class b_C>
void khot_dense(const in_T x[CFG::n_in], out_T y[CFG::n_out], const tab_C tab[CFG::n_out * CFG::n_in * CFG::k_terms],
                const b_C b[CFG::n_out]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=tab complete)
    khot_dense_impl<in_T, out_T, CFG, true>(x, y, tab, b);
}

// Same without a bias: the accumulator starts at zero.
template <class in_T, class out_T, class CFG, class tab_C>
void khot_dense(const in_T x[CFG::n_in], out_T y[CFG::n_out], const tab_C tab[CFG::n_out * CFG::n_in * CFG::k_terms]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=tab complete)
    static const signed char nob[1] = {0};
    khot_dense_impl<in_T, out_T, CFG, false>(x, y, tab, nob);
}

}  // namespace qfx
#endif
