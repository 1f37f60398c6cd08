// qfx support header: 2-D max and average pooling over CHW tensors (qfx.fixed.ops.maxpool2d / avgpool2d).
// Max pooling ignores padded positions; average pooling sums the window in CFG::sum_t (lossless, padding counts as
// zero), multiplies by the reciprocal constant (exact ap_fixed product) and casts once to out_T.
#ifndef QFX_POOL_H_
#define QFX_POOL_H_
#include "qfx_types.h"

namespace qfx {

// CFG: n_chan, in_h, in_w, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_h, pad_w.
template <class in_T, class out_T, class CFG>
void maxpool2d(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], out_T y[CFG::n_chan * CFG::out_h * CFG::out_w]) {
    QFX_PRAGMA(HLS INLINE off)
QFX_LOOP(MaxChan)
    for (unsigned c = 0; c < CFG::n_chan; c++) {
    QFX_LOOP(MaxRow)
        for (unsigned oh = 0; oh < CFG::out_h; oh++) {
        QFX_LOOP(MaxCol)
            for (unsigned ow = 0; ow < CFG::out_w; ow++) {
                QFX_PRAGMA(HLS PIPELINE)
                in_T m = 0;
                bool first = true;
                for (unsigned kh = 0; kh < CFG::k_h; kh++) {
                    for (unsigned kw = 0; kw < CFG::k_w; kw++) {
                        const int ih = (int)(oh * CFG::stride_h + kh) - (int)CFG::pad_h;
                        const int iw = (int)(ow * CFG::stride_w + kw) - (int)CFG::pad_w;
                        if (ih < 0 || ih >= (int)CFG::in_h || iw < 0 || iw >= (int)CFG::in_w) continue;
                        const in_T v = x[(c * CFG::in_h + (unsigned)ih) * CFG::in_w + (unsigned)iw];
                        if (first || v > m) m = v;
                        first = false;
                    }
                }
                y[(c * CFG::out_h + oh) * CFG::out_w + ow] = convert<out_T>(m);
            }
        }
    }
}

// CFG additionally: sum_t (holds k_h*k_w input values exactly) and recip_t.
template <class in_T, class out_T, class CFG>
void avgpool2d(const in_T x[CFG::n_chan * CFG::in_h * CFG::in_w], out_T y[CFG::n_chan * CFG::out_h * CFG::out_w],
               const typename CFG::recip_t recip) {
    QFX_PRAGMA(HLS INLINE off)
QFX_LOOP(AvgChan)
    for (unsigned c = 0; c < CFG::n_chan; c++) {
    QFX_LOOP(AvgRow)
        for (unsigned oh = 0; oh < CFG::out_h; oh++) {
        QFX_LOOP(AvgCol)
            for (unsigned ow = 0; ow < CFG::out_w; ow++) {
                QFX_PRAGMA(HLS PIPELINE)
                typename CFG::sum_t s = 0;
                for (unsigned kh = 0; kh < CFG::k_h; kh++) {
                    for (unsigned kw = 0; kw < CFG::k_w; kw++) {
                        const int ih = (int)(oh * CFG::stride_h + kh) - (int)CFG::pad_h;
                        const int iw = (int)(ow * CFG::stride_w + kw) - (int)CFG::pad_w;
                        if (ih < 0 || ih >= (int)CFG::in_h || iw < 0 || iw >= (int)CFG::in_w) continue;
                        s += x[(c * CFG::in_h + (unsigned)ih) * CFG::in_w + (unsigned)iw];
                    }
                }
                y[(c * CFG::out_h + oh) * CFG::out_w + ow] = (out_T)(s * recip);
            }
        }
    }
}

}  // namespace qfx
#endif
