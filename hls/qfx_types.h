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

// Integer ceiling division for pragma factors.
template <unsigned A, unsigned B>
struct ceil_div {
    static const unsigned value = (A + B - 1) / B;
};

}  // namespace qfx

#endif
