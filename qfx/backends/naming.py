"""Turn user names (node and tensor names from torch or ONNX) into valid, unique C++ / SystemVerilog identifiers.

Why: names in a model come from users and may contain quotes, spaces, ``;``, ``../``, keywords or nothing useful at
all. Generated code must never splice them in raw. Both backends (HLS C++ and RTL SystemVerilog) use this module so
one name maps to identifiers that are legal in either language.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

__all__ = ["sanitize_identifiers", "unique_identifiers", "sanitize_one", "comment_text", "is_identifier",
           "CXX_KEYWORDS", "SV_KEYWORDS", "RESERVED_NAMES"]

MAX_LEN = 48

CXX_KEYWORDS = frozenset("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t class compl
concept const consteval constexpr constinit const_cast continue co_await co_return co_yield decltype default delete do
double dynamic_cast else enum explicit export extern false float for friend goto if inline int long mutable namespace
new noexcept not not_eq nullptr operator or or_eq private protected public register reinterpret_cast requires return
short signed sizeof static static_assert static_cast struct switch template this thread_local throw true try typedef
typeid typename union unsigned using virtual void volatile wchar_t while xor xor_eq final override import module
""".split())

SV_KEYWORDS = frozenset("""
accept_on alias always always_comb always_ff always_latch and assert assign assume automatic before begin bind bins
binsof bit break buf bufif0 bufif1 byte case casex casez cell chandle checker class clocking cmos config const
constraint context continue cover covergroup coverpoint cross deassign default defparam design disable dist do edge
else end endcase endchecker endclass endclocking endconfig endfunction endgenerate endgroup endinterface endmodule
endpackage endprimitive endprogram endproperty endspecify endsequence endtable endtask enum event eventually expect
export extends extern final first_match for force foreach forever fork forkjoin function generate genvar global
highz0 highz1 if iff ifnone ignore_bins illegal_bins implements implies import incdir include initial inout input
inside instance int integer interconnect interface intersect join join_any join_none large let liblist library local
localparam logic longint macromodule matches medium modport module nand negedge nettype new nexttime nmos nor
noshowcancelled not notif0 notif1 null or output package packed parameter pmos posedge primitive priority program
property protected pull0 pull1 pulldown pullup pulsestyle_ondetect pulsestyle_onevent pure rand randc randcase
randsequence rcmos real realtime ref reg reject_on release repeat restrict return rnmos rpmos rtran rtranif0 rtranif1
s_always s_eventually s_nexttime s_until s_until_with scalared sequence shortint shortreal showcancelled signed small
soft solve specify specparam static string strong strong0 strong1 struct super supply0 supply1 sync_accept_on
sync_reject_on table tagged task this throughout time timeprecision timeunit tran tranif0 tranif1 tri tri0 tri1
triand trior trireg type typedef union unique unique0 unsigned until until_with untyped use uwire var vectored
virtual void wait wait_order wand weak weak0 weak1 while wildcard wire with within wor xnor xor
""".split())

#: Names that would clash with the C/C++ library, the ap_types headers or the generated code's own helpers.
RESERVED_NAMES = frozenset("""
main printf fprintf puts exit abort abs min max size_t std hls qfx ap_fixed ap_ufixed ap_int ap_uint NULL EOF INLINE
assert errno stdin stdout stderr FILE memcpy memset malloc free uint64_t int64_t int32_t uint32_t int8_t uint8_t
clk rst_n rst clock reset
""".split())

_RESERVED_PREFIXES = ("ap_", "hls", "qfx", "ssdm", "verilator", "vl_", "__")
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def is_identifier(name: str, reserved: Iterable[str] = ()) -> bool:
    """True when ``name`` can be used verbatim: valid in C++ and SystemVerilog, no keyword, not reserved."""
    res = set(reserved)
    return bool(_ID_RE.match(name)) and "__" not in name and not name.endswith("_") and len(name) <= MAX_LEN \
        and name not in CXX_KEYWORDS and name not in SV_KEYWORDS and name not in RESERVED_NAMES and name not in res \
        and not name.lower().startswith(_RESERVED_PREFIXES)


def sanitize_one(name: str, reserved: Iterable[str] = ()) -> str:
    """A valid identifier close to ``name`` (not yet made unique)."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_")
    s = s[:MAX_LEN].rstrip("_") or "x"
    if s[0].isdigit():
        s = "n" + s
    res = set(reserved)
    if s.lower().startswith(_RESERVED_PREFIXES):
        s = "u_" + s
    if s in CXX_KEYWORDS or s in SV_KEYWORDS or s in RESERVED_NAMES or s in res:
        s = s + "_v"
    return s


def unique_identifiers(names: Sequence[str], reserved: Iterable[str] = ()) -> list[str]:
    """Identifiers for ``names`` in order (duplicates in ``names`` get distinct identifiers too).

    Uniqueness is case-insensitive, so the result is also safe for case-insensitive tools and file systems.
    """
    res = set(reserved)
    taken = {r.lower() for r in res}
    out: list[str] = []
    for name in names:
        base = sanitize_one(name, res)
        cand, k = base, 2
        while cand.lower() in taken or not is_identifier(cand, res):
            suffix = f"_{k}"
            cand = base[: MAX_LEN - len(suffix)] + suffix
            k += 1
        taken.add(cand.lower())
        out.append(cand)
    return out


def sanitize_identifiers(names: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Map each distinct name to a valid identifier, unique over the result and distinct from ``reserved``.

    Identifiers match ``[A-Za-z][A-Za-z0-9_]*``, avoid C++ and SystemVerilog keywords, have no ``__`` and no
    trailing ``_`` (so that suffixes such as ``_t`` added later cannot form reserved names), and are at most
    48 characters long. The mapping is deterministic: it depends only on the order of ``names``.

    >>> sanitize_identifiers(["fc 1", "class", "../x;"])
    {'fc 1': 'fc_1', 'class': 'class_v', '../x;': 'x'}
    """
    uniq = list(dict.fromkeys(str(n) for n in names))
    return dict(zip(uniq, unique_identifiers(uniq, reserved)))


def comment_text(text: str, limit: int = 120) -> str:
    """``text`` made safe inside a one-line comment in C++, Tcl, SystemVerilog or Markdown.

    Only plain printable characters survive (no backslash, ``?``, ``*``, ``/``, quotes or newlines: these could
    continue a ``//`` line, form a trigraph, or close a block comment).
    """
    s = re.sub(r"[^A-Za-z0-9 _.,:=+()\[\]<>@#-]", "_", str(text))
    return s[:limit]
