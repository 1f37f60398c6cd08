// qfx support header: per-channel y = out_T(accum_t(x * scale[c] + shift[c])) (BatchNorm folded to fixed point).
// ap_fixed's product and sum types are exact and CFG::accum_t is their lossless format, as qfx.fixed.ops.scale_shift.
#ifndef QFX_SCALE_SHIFT_H_
#define QFX_SCALE_SHIFT_H_
#include "qfx_types.h"

namespace qfx {

// CFG: n_chan, n_inner (elements per channel), reuse_factor, multiplier_limit; types scale_t, shift_t, accum_t.
// scale / shift are integer codes of CFG::scale_t / CFG::shift_t.
template <class in_T, class out_T, class CFG, class s_C, class h_C>
void scale_shift(const in_T x[CFG::n_chan * CFG::n_inner], out_T y[CFG::n_chan * CFG::n_inner],
                 const s_C scale[CFG::n_chan], const h_C shift[CFG::n_chan]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
    QFX_PRAGMA(HLS ALLOCATION operation instances=mul limit=CFG::multiplier_limit)
QFX_LOOP(ScaleChan)
    for (unsigned c = 0; c < CFG::n_chan; c++) {
        const typename CFG::scale_t s = from_bits<typename CFG::scale_t>(scale[c]);
        const typename CFG::shift_t h = from_bits<typename CFG::shift_t>(shift[c]);
    QFX_LOOP(ScaleElem)
        for (unsigned i = 0; i < CFG::n_inner; i++) {
            const unsigned k = c * CFG::n_inner + i;
            y[k] = (out_T)(typename CFG::accum_t)(x[k] * s + h);
        }
    }
}

}  // namespace qfx
#endif
