// qfx support header: matmul of two variables (qfx op matmul; attention's Q @ K^T and P @ V):
//   y[b][m][n] = out_T(sum_k a[b][m][k] * b[b][k][n])
// Each product is ap_fixed's exact mult type; acc_t (CFG::accum_t, qfx.ops.matmul.matmul_acc_format) holds any sum
// of n_k of them, so the sum is exact in any order and the one conversion to out_T is the only rounding: what the
// golden function computes, bit for bit.
#ifndef QFX_MATMUL_H_
#define QFX_MATMUL_H_
#include "qfx_types.h"

namespace qfx {

// CFG: accum_t, n_batch (product of the leading dims), n_m, n_k, n_n; a is (n_batch, n_m, n_k), b (n_batch, n_k,
// n_n), y (n_batch, n_m, n_n), all in C order.
template <class a_T, class b_T, class out_T, class CFG>
void matmul(const a_T a[CFG::n_batch * CFG::n_m * CFG::n_k], const b_T b[CFG::n_batch * CFG::n_k * CFG::n_n],
            out_T y[CFG::n_batch * CFG::n_m * CFG::n_n]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
    typedef typename CFG::accum_t accum_t;
QFX_LOOP(MatMulBatch)
    for (unsigned t = 0; t < CFG::n_batch; t++) {
QFX_LOOP(MatMulRow)
        for (unsigned i = 0; i < CFG::n_m; i++) {
QFX_LOOP(MatMulCol)
            for (unsigned j = 0; j < CFG::n_n; j++) {
                accum_t s = 0;
QFX_LOOP(MatMulSum)
                for (unsigned k = 0; k < CFG::n_k; k++) {
                    s += a[(t * CFG::n_m + i) * CFG::n_k + k] * b[(t * CFG::n_k + k) * CFG::n_n + j];
                }
                y[(t * CFG::n_m + i) * CFG::n_n + j] = convert<out_T>(s);
            }
        }
    }
}

}  // namespace qfx
#endif
