// qfx support header: sliding windows over a pixel stream (io_stream convolutions and pooling). K_h - 1 line
// buffers hold the rows above, a K_h x K_w register window the most recent columns; one pixel is shifted in per
// scan step and an output pixel leaves as soon as its window is complete (one per input pixel after warm-up). Zero
// padding is made at the window, never stored: the scan covers the padded positions past the frame's right and
// bottom edges (and before its top-left corner when the padding exceeds K - 1) without reading the stream, and a
// window position outside the frame reads as zero, or (max pooling, which ignores padding) as the nearest position
// inside the frame, which lies in the same window and cannot change its maximum.
#ifndef QFX_WINDOW_STREAM_H_
#define QFX_WINDOW_STREAM_H_
#include "qfx_stream.h"

namespace qfx {

// CFG: n_chan, in_h, in_w, k_h, k_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w; the scan h_lo..h_hi,
// w_lo..w_hi (int), scan_w = w_hi - w_lo + 1, lb_rows = max(k_h - 1, 1), edge (1: padded positions repeat the
// nearest frame position). The caller owns the line buffers lb[lb_rows][scan_w][n_chan] and the window registers
// m[k_h][k_w][n_chan] (static arrays it can partition).

// Is scan position (h, w) a pixel of the frame (read from the stream) or padding?
template <class CFG>
inline bool window_inside(int h, int w) {
    QFX_PRAGMA(HLS INLINE)
    return h >= 0 && h < (int)CFG::in_h && w >= 0 && w < (int)CFG::in_w;
}

// Shift in the value at scan position (h, w): column w of the rows above comes out of the line buffers, which then
// move up one row; the window registers move one column left.
template <class T, class CFG>
void window_shift(T lb[CFG::lb_rows][CFG::scan_w][CFG::n_chan], T m[CFG::k_h][CFG::k_w][CFG::n_chan],
                  const pixel<T, CFG::n_chan> &v, int w) {
    QFX_PRAGMA(HLS INLINE)
    const unsigned x = (unsigned)(w - CFG::w_lo);
    T col[CFG::k_h][CFG::n_chan];
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=col complete dim=0)
    for (unsigned i = 0; i + 1 < CFG::k_h; i++)
        for (unsigned c = 0; c < CFG::n_chan; c++) col[i][c] = lb[i][x][c];
    for (unsigned c = 0; c < CFG::n_chan; c++) col[CFG::k_h - 1][c] = v[c];
    for (unsigned i = 0; i + 1 < CFG::k_h; i++)
        for (unsigned c = 0; c < CFG::n_chan; c++) lb[i][x][c] = col[i + 1][c];
    for (unsigned i = 0; i < CFG::k_h; i++) {
        for (unsigned j = 0; j + 1 < CFG::k_w; j++)
            for (unsigned c = 0; c < CFG::n_chan; c++) m[i][j][c] = m[i][j + 1][c];
        for (unsigned c = 0; c < CFG::n_chan; c++) m[i][CFG::k_w - 1][c] = col[i][c];
    }
}

// The output pixel (oh, ow) whose window ends at scan position (h, w), if there is one.
template <class CFG>
inline bool window_trigger(int h, int w, unsigned &oh, unsigned &ow) {
    QFX_PRAGMA(HLS INLINE)
    const int a = h + (int)CFG::pad_h - (int)(CFG::k_h - 1);
    const int b = w + (int)CFG::pad_w - (int)(CFG::k_w - 1);
    if (a < 0 || b < 0 || a % (int)CFG::stride_h != 0 || b % (int)CFG::stride_w != 0) return false;
    oh = (unsigned)a / CFG::stride_h;
    ow = (unsigned)b / CFG::stride_w;
    return oh < CFG::out_h && ow < CFG::out_w;
}

// The window ending at (h, w), in (c, kh, kw) order (the order of the kernels' weights).
template <class T, class CFG>
void window_read(const T m[CFG::k_h][CFG::k_w][CFG::n_chan], int h, int w,
                 T out[CFG::n_chan * CFG::k_h * CFG::k_w]) {
    QFX_PRAGMA(HLS INLINE)
    const int r0 = h - (int)(CFG::k_h - 1), q0 = w - (int)(CFG::k_w - 1);
    for (unsigned i = 0; i < CFG::k_h; i++) {
        for (unsigned j = 0; j < CFG::k_w; j++) {
            int r = r0 + (int)i, q = q0 + (int)j;
            const bool real = window_inside<CFG>(r, q);
            if (!real && CFG::edge) {
                r = r < 0 ? 0 : (r >= (int)CFG::in_h ? (int)CFG::in_h - 1 : r);
                q = q < 0 ? 0 : (q >= (int)CFG::in_w ? (int)CFG::in_w - 1 : q);
            }
            for (unsigned c = 0; c < CFG::n_chan; c++)
                out[(c * CFG::k_h + i) * CFG::k_w + j] = (real || CFG::edge) ? m[r - r0][q - q0][c] : T(0);
        }
    }
}

// Convolution on one window (CFG: the layer's configuration for one output pixel): the weights are values of
// CFG::weight_t converted from their codes once per frame by window_weights (as qfx::conv2d does once per call),
// then the same sum as qfx::conv2d: bias, terms in (c, kh, kw) order into the lossless CFG::accum_t, one cast.
template <class CFG, class w_C>
void window_weights(const w_C w[CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w],
                    typename CFG::weight_t wv[CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w]) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(WindowWeights)
    for (unsigned i = 0; i < CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w; i++)
        wv[i] = from_bits<typename CFG::weight_t>(w[i]);
}

template <class in_T, class out_T, class CFG, bool has_bias, class b_C>
void window_conv(const in_T win[CFG::n_chan * CFG::k_h * CFG::k_w], out_T y[CFG::n_filt],
                 const typename CFG::weight_t wv[CFG::n_filt * CFG::n_chan * CFG::k_h * CFG::k_w],
                 const b_C b[CFG::n_filt]) {
    QFX_PRAGMA(HLS INLINE)
    static const unsigned n_win = CFG::n_chan * CFG::k_h * CFG::k_w;
    QFX_PRAGMA(HLS ALLOCATION operation instances=mul limit=CFG::multiplier_limit)
QFX_LOOP(WindowFilt)
    for (unsigned o = 0; o < CFG::n_filt; o++) {
        typename CFG::accum_t acc = 0;
        if (has_bias) acc = from_bits<typename CFG::bias_t>(b[o]);
    QFX_LOOP(WindowTap)
        for (unsigned j = 0; j < n_win; j++) acc += win[j] * wv[o * n_win + j];
        y[o] = (out_T)acc;
    }
}

}  // namespace qfx
#endif
