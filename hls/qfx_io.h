// qfx support header for testbenches (not synthesized): move raw integer codes in and out of ap_fixed values
// through their bits, never through double, and read/write int64 code files.
#ifndef QFX_IO_H_
#define QFX_IO_H_
#include <cstdio>
#include <vector>
#include "qfx_types.h"

namespace qfx {

// ap_fixed value whose W-bit code is the low W bits of `code`.
template <class T>
T from_code(long long code) {
    T v = 0;
    v.range(T::width - 1, 0) = code;
    return v;
}

// Code of an ap_fixed value as a sign- (Signed) or zero-extended int64.
template <class T, bool Signed>
long long to_code(const T &v) {
    if (Signed) {
        ap_int<T::width> c = v.range(T::width - 1, 0);
        return (long long)c.to_int64();
    }
    ap_uint<T::width> c = v.range(T::width - 1, 0);
    return (long long)c.to_uint64();
}

// Whole file of little-endian int64 values; false if it cannot be read.
inline bool read_codes(const char *path, std::vector<long long> &out) {
    std::FILE *f = std::fopen(path, "rb");
    if (!f) return false;
    long long v;
    out.clear();
    while (std::fread(&v, sizeof v, 1, f) == 1) out.push_back(v);
    std::fclose(f);
    return true;
}

inline bool write_codes(const char *path, const std::vector<long long> &v) {
    std::FILE *f = std::fopen(path, "wb");
    if (!f) return false;
    const bool ok = v.empty() || std::fwrite(v.data(), sizeof(long long), v.size(), f) == v.size();
    return std::fclose(f) == 0 && ok;
}

}  // namespace qfx
#endif
