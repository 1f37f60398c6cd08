// qfx support header: residual add, y = out_T(a + b); ap_fixed's plus type holds the exact sum (qfx.fixed.ops.add).
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

}  // namespace qfx
#endif
