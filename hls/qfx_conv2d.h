// qfx support header: 2-D convolution (groups = 1, zero padding), CHW tensors, weights (O, C, KH, KW).
// Terms are accumulated in (c, kh, kw) order into CFG::accum_t, which qfx sizes losslessly; padded positions are
// skipped (they would add zero). One cast to out_T per output, exactly as qfx.fixed.ops.conv2d.
#ifndef QFX_CONV2D_H_
#define QFX_CONV2D_H_
#include "qfx_types.h"

namespace qfx {

// Window of input pixels for output (oh, ow), in (c, kh, kw) order; padded positions read as zero.
template <class in_T, class CFG>
void conv_window(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], unsigned oh, unsigned ow,
                 in_T win[CFG::n_chan * CFG::k_h * CFG::k_w]) {
    QFX_PRAGMA(HLS INLINE)
    for (unsigned c = 0; c < CFG::n_chan; c++) {
        for (unsigned kh = 0; kh < CFG::k_h; kh++) {
            for (unsigned kw = 0; kw < CFG::k_w; kw++) {
                const int ih = (int)(oh * CFG::stride_h + kh) - (int)CFG::pad_h;
                const int iw = (int)(ow * CFG::stride_w + kw) - (int)CFG::pad_w;
                const bool inside = ih >= 0 && ih < (int)CFG::in_h && iw >= 0 && iw < (int)CFG::in_w;
                win[(c * CFG::k_h + kh) * CFG::k_w + kw] =
                    inside ? x[(c * CFG::in_h + (unsigned)ih) * CFG::in_w + (unsigned)iw] : in_T(0);
            }
        }
    }
}

// Weights (O, C, KH, KW) and biases are integer codes of CFG::weight_t / CFG::bias_t.
template <class in_T, class out_T, class CFG, bool has_bias, class w_C, class b_C>
void conv2d_impl(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w],
                 out_T y[CFG::n_filt * CFG::out_h * CFG::out_w],
                 const w_C w[CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w], const b_C b[CFG::n_filt]) {
    static const unsigned n_win = CFG::n_chan * CFG::k_h * CFG::k_w;
    QFX_PRAGMA(HLS ALLOCATION operation instances=mul limit=CFG::multiplier_limit)
    // weights rebuilt from their codes once per call, not once per output pixel
    typename CFG::weight_t wv[CFG::n_filt * n_win];
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=wv cyclic factor=CFG::multiplier_limit)
QFX_LOOP(ConvWeights)
    for (unsigned i = 0; i < CFG::n_filt * n_win; i++) wv[i] = from_bits<typename CFG::weight_t>(w[i]);
QFX_LOOP(ConvRow)
    for (unsigned oh = 0; oh < CFG::out_h; oh++) {
    QFX_LOOP(ConvCol)
        for (unsigned ow = 0; ow < CFG::out_w; ow++) {
            QFX_PRAGMA(HLS PIPELINE II=CFG::reuse_factor)
            in_T win[n_win];
            QFX_PRAGMA(HLS ARRAY_PARTITION variable=win complete)
            conv_window<in_T, CFG>(x, oh, ow, win);
        QFX_LOOP(ConvFilt)
            for (unsigned o = 0; o < CFG::n_filt; o++) {
                typename CFG::accum_t acc = 0;
                if (has_bias) acc = from_bits<typename CFG::bias_t>(b[o]);
            QFX_LOOP(ConvTap)
                for (unsigned j = 0; j < n_win; j++) {
                    acc += win[j] * wv[o * n_win + j];
                }
                y[(o * CFG::out_h + oh) * CFG::out_w + ow] = (out_T)acc;
            }
        }
    }
}

template <class in_T, class out_T, class CFG, class w_C, class b_C>
void conv2d(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], out_T y[CFG::n_filt * CFG::out_h * CFG::out_w],
            const w_C w[CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w], const b_C b[CFG::n_filt]) {
    QFX_PRAGMA(HLS INLINE off)
    conv2d_impl<in_T, out_T, CFG, true>(x, y, w, b);
}

template <class in_T, class out_T, class CFG, class w_C>
void conv2d(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], out_T y[CFG::n_filt * CFG::out_h * CFG::out_w],
            const w_C w[CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w]) {
    QFX_PRAGMA(HLS INLINE off)
    static const signed char nob[1] = {0};
    conv2d_impl<in_T, out_T, CFG, false>(x, y, w, nob);
}

}  // namespace qfx
#endif
