// qfx support header: io_stream plumbing. Tensors travel as hls::stream of scalars in C-order (CHW); each layer
// buffers its input, runs the io_parallel kernel and streams its output, so a DATAFLOW top overlaps layers.
#ifndef QFX_STREAM_H_
#define QFX_STREAM_H_
#include "qfx_types.h"

namespace qfx {

template <class T, unsigned N>
void stream_to_array(hls::stream<T> &s, T a[N]) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(StreamRead)
    for (unsigned i = 0; i < N; i++) {
        QFX_PRAGMA(HLS PIPELINE)
        a[i] = s.read();
    }
}

template <class T, unsigned N>
void array_to_stream(const T a[N], hls::stream<T> &s) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(StreamWrite)
    for (unsigned i = 0; i < N; i++) {
        QFX_PRAGMA(HLS PIPELINE)
        s.write(a[i]);
    }
}

// Fan-out: a DATAFLOW stream has one consumer, so a tensor read twice is duplicated first.
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
