// qfx support header: io_stream plumbing. Inside the DATAFLOW top, an image tensor (C, H, W) travels as H*W pixels
// in raster order, each pixel one stream element holding its C channel values (qfx::pixel, as hls4ml's
// nnet::array); any other tensor travels as one element holding the whole vector. The top's ports carry scalars in
// C order (CHW), converted at the boundary. Layers without a streaming kernel gather their input pixels into a CHW
// array, run the io_parallel kernel and stream the result out (the whole-tensor form).
#ifndef QFX_STREAM_H_
#define QFX_STREAM_H_
#include "qfx_types.h"

namespace qfx {

// One stream element: the N channel values of a pixel (or a whole vector).
template <class T, unsigned N>
struct pixel {
    static const unsigned size = N;
    T d[N];
    T &operator[](unsigned i) { return d[i]; }
    const T &operator[](unsigned i) const { return d[i]; }
};

// Graph input: C-order scalars -> P pixels of C values. With one channel (or one pixel) the orders agree and the
// values are only regrouped; otherwise the CHW frame is buffered once to reorder it (the port's order costs that).
template <class T, unsigned C, unsigned P>
void scalars_to_pixels(hls::stream<T> &in, hls::stream<pixel<T, C> > &out) {
    QFX_PRAGMA(HLS INLINE off)
    if (C == 1 || P == 1) {
    QFX_LOOP(PackPixel)
        for (unsigned p = 0; p < P; p++) {
            QFX_PRAGMA(HLS PIPELINE II=C)
            pixel<T, C> v;
            for (unsigned c = 0; c < C; c++) v[c] = in.read();
            out.write(v);
        }
    } else {
        T frame[C * P];
    QFX_LOOP(ReadFrame)
        for (unsigned i = 0; i < C * P; i++) {
            QFX_PRAGMA(HLS PIPELINE)
            frame[i] = in.read();
        }
    QFX_LOOP(WritePixels)
        for (unsigned p = 0; p < P; p++) {
            QFX_PRAGMA(HLS PIPELINE II=C)
            pixel<T, C> v;
            for (unsigned c = 0; c < C; c++) v[c] = frame[c * P + p];
            out.write(v);
        }
    }
}

// Graph output: P pixels of C values -> C-order scalars (buffered when C > 1 and P > 1, as above).
template <class T, unsigned C, unsigned P>
void pixels_to_scalars(hls::stream<pixel<T, C> > &in, hls::stream<T> &out) {
    QFX_PRAGMA(HLS INLINE off)
    if (C == 1 || P == 1) {
    QFX_LOOP(UnpackPixel)
        for (unsigned p = 0; p < P; p++) {
            QFX_PRAGMA(HLS PIPELINE II=C)
            const pixel<T, C> v = in.read();
            for (unsigned c = 0; c < C; c++) out.write(v[c]);
        }
    } else {
        T frame[C * P];
    QFX_LOOP(ReadPixels)
        for (unsigned p = 0; p < P; p++) {
            QFX_PRAGMA(HLS PIPELINE)
            const pixel<T, C> v = in.read();
            for (unsigned c = 0; c < C; c++) frame[c * P + p] = v[c];
        }
    QFX_LOOP(WriteFrame)
        for (unsigned i = 0; i < C * P; i++) {
            QFX_PRAGMA(HLS PIPELINE)
            out.write(frame[i]);
        }
    }
}

// Whole-tensor form: P pixels into a CHW array ...
template <class T, unsigned C, unsigned P>
void pixels_to_array(hls::stream<pixel<T, C> > &in, T a[C * P]) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(GatherPixels)
    for (unsigned p = 0; p < P; p++) {
        QFX_PRAGMA(HLS PIPELINE)
        const pixel<T, C> v = in.read();
        for (unsigned c = 0; c < C; c++) a[c * P + p] = v[c];
    }
}

// ... and a CHW array out as P pixels.
template <class T, unsigned C, unsigned P>
void array_to_pixels(const T a[C * P], hls::stream<pixel<T, C> > &out) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(ScatterPixels)
    for (unsigned p = 0; p < P; p++) {
        QFX_PRAGMA(HLS PIPELINE)
        pixel<T, C> v;
        for (unsigned c = 0; c < C; c++) v[c] = a[c * P + p];
        out.write(v);
    }
}

// Fan-out: a DATAFLOW stream has one consumer, so a tensor read twice is duplicated first (N elements).
template <class T, unsigned N>
void clone_stream(hls::stream<T> &in, hls::stream<T> &out1, hls::stream<T> &out2) {
    QFX_PRAGMA(HLS INLINE off)
QFX_LOOP(Clone)
    for (unsigned i = 0; i < N; i++) {
        QFX_PRAGMA(HLS PIPELINE)
        const T v = in.read();
        out1.write(v);
        out2.write(v);
    }
}

}  // namespace qfx
#endif
