// qfx support header: ap_types includes and the pragma macro shared by every qfx_*.h and generated file.
#ifndef QFX_TYPES_H_
#define QFX_TYPES_H_

// The 2019 ap_types snapshot (and some Vitis releases) trip -Wall inside their own code (uninitialized members,
// enum constants in boolean context). Silence those warnings for the headers only; generated code stays -Wall clean.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wint-in-bool-context"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wclass-memaccess"
#include <ap_fixed.h>
#include <ap_int.h>
#include <hls_stream.h>
#pragma GCC diagnostic pop

// HLS pragmas are spelled through QFX_PRAGMA so that g++ -Wall (which warns on unknown pragmas) stays quiet in C
// simulation, while Vitis HLS (which defines __SYNTHESIS__) sees the ordinary "#pragma HLS ...".
#ifdef __SYNTHESIS__
#define QFX_PRAGMA_STR(...) _Pragma(#__VA_ARGS__)
#define QFX_PRAGMA(...) QFX_PRAGMA_STR(__VA_ARGS__)
#define QFX_LOOP(name) name:
#else
#define QFX_PRAGMA(...)
#define QFX_LOOP(name)
#endif
// QFX_LOOP(Name) labels a loop for Vitis HLS reports (a plain label would trip -Wunused-label in g++).

namespace qfx {

// Value of type T whose W-bit code is the low W bits of `code`. Constants are stored as plain integer codes (exact,
// and free to compile: no per-element ap_fixed constructor) and turned into T here; in hardware this is only wires.
template <class T, class C>
inline T from_bits(C code) {
    QFX_PRAGMA(HLS INLINE)
    T v = 0;
    v.range(T::width - 1, 0) = (long long)code;
    return v;
}

// y = (out_T)v as qfx.fixed.kernels.cast defines it: a conversion, with out_T's rounding and overflow. ap_fixed
// assigns a value of the *same* type by copying it (no overflow step), so a same-type AP_SAT_SYM value holding the
// most negative code would stay there; converter<T, T> widens by one integer bit first (exact), so the conversion
// into T always runs. For different types this is the plain C++ conversion.
template <class out_T, class in_T>
struct converter {
    static out_T run(const in_T &v) { return (out_T)v; }
};
template <class T>
struct converter<T, T> {
    static T run(const T &v) { return T(ap_fixed<T::width + 1, T::iwidth + 1>(v)); }
};
template <class out_T, class in_T>
inline out_T convert(const in_T &v) {
    QFX_PRAGMA(HLS INLINE)
    return converter<out_T, in_T>::run(v);
}

// Integer ceiling division for pragma factors.
template <unsigned A, unsigned B>
struct ceil_div {
    static const unsigned value = (A + B - 1) / B;
};

}  // namespace qfx

#endif
