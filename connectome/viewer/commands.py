"""The ``export-precomputed`` and ``view`` commands (argument checks, then the library)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from connectome.errors import UserInputError

log = logging.getLogger(__name__)


def export_command(args) -> int:
    from connectome.viewer.export import export_precomputed

    report = export_precomputed(args.workspace, args.out, compress=not args.no_compress)
    print(report.describe())
    return 0


def parse_size(text: str) -> tuple[int, int]:
    parts = str(text).split(",")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise UserInputError(f"--size: expected W,H in pixels, got {text!r}") from None
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise UserInputError(f"--size: width and height must be 64..8192 pixels, got {text!r}")
    return w, h


def _local_manifest(out: Path) -> dict:
    from connectome.viewer.export import MANIFEST

    path = out / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(
            f"{path}: not found; run `connectome export-precomputed` first (or `connectome view` without --no-export)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable export manifest ({exc})") from None


def _remote_manifest(base_url: str) -> dict:
    from connectome.viewer.export import MANIFEST

    url = f"{base_url.rstrip('/')}/{MANIFEST}"
    try:
        if base_url.startswith(("http://", "https://")):
            from urllib.request import urlopen

            with urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        from cloudfiles import CloudFiles

        data = CloudFiles(base_url).get(MANIFEST)
        if data is None:
            raise FileNotFoundError(url)
        return json.loads(data)
    except Exception as exc:  # network, permissions, bad JSON: all a bad --base-url
        raise UserInputError(
            f"--base-url: cannot read {url} ({type(exc).__name__}: {exc}); give --workspace "
            "or --out to take the layer list from the local export instead"
        ) from None


def _out_dir(args) -> Path:
    from connectome.viewer.export import default_out

    if args.out:
        return Path(args.out)
    if not args.workspace:
        raise UserInputError("view: --workspace WS (or --out DIR with --no-export) is required")
    return default_out(args.workspace)


def view_command(args) -> int:
    from connectome.viewer.state import DEFAULT_CLIENT_URL, build_state, state_url

    if args.print_url:
        if not args.base_url:
            raise UserInputError("--print-url: needs --base-url URL (where the export's layer folders are published)")
        local = args.workspace or args.out
        manifest = _local_manifest(_out_dir(args)) if local else _remote_manifest(args.base_url)
        print(state_url(args.client_url or DEFAULT_CLIENT_URL, build_state(manifest, args.base_url)))
        return 0
    if args.base_url or args.client_url:
        raise UserInputError("--base-url / --client-url: only with --print-url")
    size = parse_size(args.size)
    if args.timeout <= 0:
        raise UserInputError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    out = _out_dir(args)
    if not args.no_export and not args.workspace:
        raise UserInputError("view: --workspace WS is required (or --no-export to serve --out as it is)")

    from connectome.viewer.serve import DEFAULT_PORT, ViewServer

    if args.screenshot:
        from connectome.viewer.screenshot import find_browser

        find_browser()
    port = args.port if args.port is not None else (0 if args.screenshot else DEFAULT_PORT)
    server = ViewServer(
        out, bind=args.bind, port=port, cors=tuple(getattr(args, "cors", None) or ())
    )  # listen first: a busy port fails before any work
    try:
        if not args.no_export:
            from connectome.viewer.export import export_precomputed

            print(export_precomputed(args.workspace, out).describe())
        manifest = _local_manifest(out)
    except BaseException:
        server.stop()
        raise
    state = build_state(manifest, server.data_url)
    url = state_url(server.client_url, state)
    if args.screenshot:
        from connectome.viewer.screenshot import take_screenshot

        with server:
            result = take_screenshot(url, args.screenshot, size=size, timeout=args.timeout, state=state)
        print(
            f"view: wrote {args.screenshot} ({size[0]}x{size[1]}, layers {', '.join(result['layers'])}, "
            f"{result['seconds']:.1f} s)"
        )
        return 0
    print(f"view: serving {out} on {server.url} (Ctrl-C stops)")
    print(url)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
