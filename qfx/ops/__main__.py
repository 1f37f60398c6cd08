"""``python -m qfx.ops``: the op reference, printed from the registry."""
from qfx.ops import REGISTRY


def main() -> None:
    for d in REGISTRY.values():
        consts = sorted(d.consts) + [f"{c}?" for c in sorted(d.optional_consts)]
        attrs = [a.name + ("" if a.required else f"={a.default!r}") for a in d.attrs]
        print(f"{d.name:12s} {d.n_inputs} in; consts: {', '.join(consts) or '-'}; attrs: {', '.join(attrs) or '-'}; "
              f"acc: {d.acc_rule if d.needs_acc else '-'}; categories: {', '.join(sorted(d.categories)) or '-'}")
        print(f"{'':12s} {d.doc}")


if __name__ == "__main__":
    main()
