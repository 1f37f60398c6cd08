// qfx support header: softmax over the last axis with an exp ROM and a reciprocal ROM (qfx op softmax, hls4ml's
// scheme), row by row (a vector is one row; attention's (heads, S, S) scores are heads * S rows of S):
//   m = max(x);  e_i = exp_table[m - x_i];  s = sum(e_i);  r = recip_table[s >> shift];  y_i = out_T(e_i * r)
// The ROMs hold the IR's table codes (qfx.ops.softmax.softmax_tables); the distance m - x_i is a code distance, an
// unsigned integer below 2^in_T::width, so it addresses the exp ROM directly. The sum is exact (sum_t holds n times
// the largest exp code), the product e_i * r is ap_ufixed's exact mult type, and the only rounding is the one
// conversion to out_T: what qfx.ops.softmax's golden function computes, bit for bit.
#ifndef QFX_SOFTMAX_H_
#define QFX_SOFTMAX_H_
#include "qfx_types.h"

namespace qfx {

// CFG: exp_t, recip_t (the tables' formats with TRN/WRAP modes), sum_t (exact sum of n_elem exp codes), n_elem
// (the row length), n_rows (rows, each softmaxed independently with the same ROMs), n_exp (= 2^in_T::width),
// n_recip, shift (right shift of the sum's code that indexes recip_table), index_flip (2^(width-1) for a signed
// in_T, else 0: raw bits with the sign bit inverted are the code minus min_code, an unsigned number that orders
// like the code).
template <class in_T, class out_T, class CFG, class ecode_T, class rcode_T>
void softmax(const in_T x[CFG::n_rows * CFG::n_elem], out_T y[CFG::n_rows * CFG::n_elem],
             const ecode_T exp_table[CFG::n_exp], const rcode_T recip_table[CFG::n_recip]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
    typedef typename CFG::exp_t exp_t;
    typedef typename CFG::recip_t recip_t;
    typedef typename CFG::sum_t sum_t;
QFX_LOOP(SoftmaxRow)
    for (unsigned row = 0; row < CFG::n_rows; row++) {
        const unsigned base = row * CFG::n_elem;
        unsigned u[CFG::n_elem];
        unsigned m = 0;
QFX_LOOP(SoftmaxMax)
        for (unsigned i = 0; i < CFG::n_elem; i++) {
            const ap_uint<in_T::width> raw = x[base + i].range(in_T::width - 1, 0);
            u[i] = (unsigned)raw.to_uint() ^ CFG::index_flip;
            if (i == 0 || u[i] > m) m = u[i];
        }
        exp_t e[CFG::n_elem];
        sum_t s = 0;
QFX_LOOP(SoftmaxExp)
        for (unsigned i = 0; i < CFG::n_elem; i++) {
            e[i] = from_bits<exp_t>(exp_table[m - u[i]]);
            s += e[i];
        }
        const ap_uint<sum_t::width> s_code = s.range(sum_t::width - 1, 0);
        const recip_t r = from_bits<recip_t>(recip_table[(s_code >> CFG::shift).to_uint64()]);
QFX_LOOP(SoftmaxMul)
        for (unsigned i = 0; i < CFG::n_elem; i++) {
            y[base + i] = convert<out_T>(e[i] * r);
        }
    }
}

}  // namespace qfx
#endif
