// qfx support header: K-hot 2-D convolution, the window reader of qfx_conv2d.h feeding the shift-add sums of
// qfx_khot.h (table (O, C, KH, KW) x CFG::k_terms). One output pixel per pipeline step, as qfx::conv2d.
#ifndef QFX_KHOT_CONV2D_H_
#define QFX_KHOT_CONV2D_H_
#include "qfx_conv2d.h"
#include "qfx_khot.h"

namespace qfx {

// CFG: the conv2d fields (n_chan .. pad_w), n_win = n_chan * k_h * k_w, k_terms, w_frac, reuse_factor.
template <class in_T, class out_T, class CFG, bool has_bias, class tab_C, class b_C>
void khot_conv2d_impl(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w],
                      out_T y[CFG::n_filt * CFG::out_h * CFG::out_w],
                      const tab_C tab[CFG::n_filt * CFG::n_win * CFG::k_terms], const b_C b[CFG::n_filt]) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(KhotRow)
    for (unsigned oh = 0; oh < CFG::out_h; oh++) {
    QFX_LOOP(KhotCol)
        for (unsigned ow = 0; ow < CFG::out_w; ow++) {
            QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
            in_T win[CFG::n_win];
            QFX_PRAGMA(HLS ARRAY_PARTITION variable=win complete)
            conv_window<in_T, CFG>(x, oh, ow, win);
        QFX_LOOP(KhotFilt)
            for (unsigned o = 0; o < CFG::n_filt; o++) {
                typename CFG::accum_t acc = 0;
                if (has_bias) acc = from_bits<typename CFG::bias_t>(b[o]);
                y[(o * CFG::out_h + oh) * CFG::out_w + ow] = (out_T)khot_dot<in_T, CFG, CFG::n_win>(win, tab, o, acc);
            }
        }
    }
}

template <class in_T, class out_T, class CFG, class tab_C, class b_C>
void khot_conv2d(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], out_T y[CFG::n_filt * CFG::out_h * CFG::out_w],
                 const tab_C tab[CFG::n_filt * CFG::n_win * CFG::k_terms], const b_C b[CFG::n_filt]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=tab complete)
    khot_conv2d_impl<in_T, out_T, CFG, true>(x, y, tab, b);
}

// Same without a bias: the accumulator starts at zero.
template <class in_T, class out_T, class CFG, class tab_C>
void khot_conv2d(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], out_T y[CFG::n_filt * CFG::out_h * CFG::out_w],
                 const tab_C tab[CFG::n_filt * CFG::n_win * CFG::k_terms]) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=tab complete)
    static const signed char nob[1] = {0};
    khot_conv2d_impl<in_T, out_T, CFG, false>(x, y, tab, nob);
}

}  // namespace qfx
#endif
