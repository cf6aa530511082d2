"""Run functions of ``connectome review plan | decide | import`` (declared in
:mod:`connectome.commands.table`): parse, validate, call the library."""

from __future__ import annotations


def plan(args) -> int:
    from connectome.review.plan import plan_review
    from connectome.workspace import parse_zyx

    box = parse_zyx(args.box, "--box", cast=int) if args.box else None
    q = plan_review(
        args.workspace,
        args.target,
        args.count,
        strategy=args.strategy,
        box_zyx=box,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    n = max(0, len(q.read_text().splitlines()) - 1)
    print(f"review plan: {n} items ({args.strategy}) in {q}")
    return 0


def decide(args) -> int:
    from connectome.review.decisions import decide as _decide
    from connectome.workspace import parse_zyx

    point = parse_zyx(args.point, "--point", cast=int, positive=False) if args.point else None
    row = _decide(args.workspace, args.target, args.item, args.decision, author=args.author, point=point)
    at = f" at {row['point']}" if "point" in row else ""
    print(f"review decide: {row['item_id']} {row['decision']}{at} by {row['author']}")
    return 0


def import_(args) -> int:
    from connectome.review.corrections import import_corrections
    from connectome.workspace import parse_zyx

    offset = parse_zyx(args.offset, "--offset", cast=int, positive=False) if args.offset else None
    meta = import_corrections(args.workspace, args.target, args.labels, offset=offset)
    last = meta["imports"][-1]
    print(
        f"review import: {last['voxels']['corrected']} voxels in {len(last['item_ids'])} queued boxes "
        f"({', '.join(last['item_ids'][:5])}{', ...' if len(last['item_ids']) > 5 else ''}); "
        f"{meta['voxels']['corrected']} corrected voxels in all"
    )
    return 0
