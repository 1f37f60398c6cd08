// qfx support header: element-wise lookup table (qfx op lut: sigmoid, tanh, GELU, ... defined by their table).
// The ROM holds, per input code from min_code up, the output code: the IR's table already cast to out_T by qfx at
// export (qfx.fixed.kernels.cast, the golden cast), so the hardware is one ROM read per element and no arithmetic.
#ifndef QFX_LUT_H_
#define QFX_LUT_H_
#include "qfx_types.h"

namespace qfx {

// CFG: n_elem (elements), n_table (= 2^in_T::width entries), index_flip (2^(width-1) for a signed in_T, else 0).
// The ROM address is the input's code minus min_code: its raw bits with the sign bit inverted (two's complement
// offset by 2^(width-1)), so addressing costs no adder.
template <class in_T, class out_T, class CFG, class code_T>
void lut(const in_T x[CFG::n_elem], out_T y[CFG::n_elem], const code_T table[CFG::n_table]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
QFX_LOOP(Lut)
    for (unsigned i = 0; i < CFG::n_elem; i++) {
        const ap_uint<in_T::width> raw = x[i].range(in_T::width - 1, 0);
        const unsigned idx = (unsigned)raw.to_uint() ^ CFG::index_flip;
        y[i] = from_bits<out_T>(table[idx]);
    }
}

}  // namespace qfx
#endif
