// qfx support header: ops that only move elements (concat, upsample2d, zeropad2d, transpose, ...), all one kernel.
// Each is defined by an index map (qfx OpDef.gather_map): output element i is element map[i] of the concatenation
// of the inputs, every input converted to out_T first, with one zero code appended (map[i] == CFG::n_cat selects
// it). That is the golden definition (qfx.ops.base.gather_golden) step by step, so a new such op needs only a map.
#ifndef QFX_GATHER_H_
#define QFX_GATHER_H_
#include "qfx_types.h"

namespace qfx {

// Loads the inputs, each converted to out_T, one after the other into cat[OFF ...]. The sizes arrive as the
// template pack N0, N...; the overload without sizes and inputs ends the recursion.
template <class out_T, unsigned OFF>
inline void gather_load(out_T *) {}

template <class out_T, unsigned OFF, unsigned N0, unsigned... N, class in_T, class... rest_T>
inline void gather_load(out_T *cat, const in_T *x, const rest_T *...rest) {
    QFX_PRAGMA(HLS INLINE)
QFX_LOOP(GatherLoad)
    for (unsigned i = 0; i < N0; i++) {
        cat[OFF + i] = convert<out_T>(x[i]);
    }
    gather_load<out_T, OFF + N0, N...>(cat, rest...);
}

// CFG: n_out (output elements), n_cat (input elements in all). N...: each input's element count, in input order.
// map: CFG::n_out indices into the concatenation, CFG::n_cat meaning the zero code. Constant indices: after
// unrolling every output element is a wire from one input element (through its conversion) or a constant zero.
template <class out_T, class CFG, unsigned... N, class map_T, class... in_T>
void gather(out_T y[CFG::n_out], const map_T map[CFG::n_out], const in_T *...x) {
    QFX_PRAGMA(HLS INLINE off)
    QFX_PRAGMA(HLS PIPELINE)
    out_T cat[CFG::n_cat + 1];
    QFX_PRAGMA(HLS ARRAY_PARTITION variable=cat complete dim=0)
    gather_load<out_T, 0, N...>(cat, x...);
    cat[CFG::n_cat] = 0;
QFX_LOOP(Gather)
    for (unsigned i = 0; i < CFG::n_out; i++) {
        y[i] = cat[map[i]];
    }
}

}  // namespace qfx
#endif
