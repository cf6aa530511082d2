"""``connectome review open``: review the queue in Neuroglancer, served by neuroglancer's own
Python server (tornado, bundled client; loopback unless ``--bind`` says otherwise).

* :class:`ReviewSession` is the review logic without any browser: the queue, the latest
  decisions, which item is current (a new session starts at the first undecided item), and
  :meth:`ReviewSession.decide` which writes each decision at once through
  :func:`connectome.review.decisions.decide` (atomic: a killed session loses nothing).
* :func:`build_state` is the neuroglancer state: ``raw`` and the target's arrays as lazily
  read local volumes (only the chunks the browser asks for are read from the zarr arrays; no
  volume is loaded whole), the queue as an annotation layer of boxes (``queue``) and the missed
  points (``missed``).
* :class:`ReviewViewer` wires the two to a ``neuroglancer.Viewer``: key bindings (``a`` accept,
  ``r`` reject, ``m`` missed at the mouse, ``n`` next, ``p`` previous), the jump to each item and
  a status line. :func:`run_open` is the command.

Coordinates: the workspace is z, y, x; the viewer's global dimensions are declared x, y, z
(neuroglancer's convention: the first two are the xy panel's axes), so every position, box and
mouse coordinate exchanged with neuroglancer is in x, y, z order, continuous voxel coordinates
(voxel ``i`` spans ``[i, i + 1)``). Nothing here imports neuroglancer at module level.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from connectome.errors import UserInputError
from connectome.review.decisions import author_name
from connectome.review.queue import QUEUE, REVIEW_JSON, Item, check_identity, read_queue, read_review_json, review_dir

log = logging.getLogger(__name__)

#: neuroglancer key -> (the action it is bound to, what the action does: ReviewViewer.act)
KEYS = {
    "keya": ("review-accept", "accept"),
    "keyr": ("review-reject", "reject"),
    "keym": ("review-missed", "missed"),
    "keyn": ("review-next", "next"),
    "keyp": ("review-previous", "previous"),
}
KEY_HELP = "keys: a accept · r reject · m missed (point at the mouse) · n next · p previous"
PANEL_PX = 350  # assumed panel size (pixels) when fitting the zoom to an item's box
MESH_MAX_BYTES = 512 * 2**20  # meshes of a segmentation volume up to this size (it is read whole)

COLORS = {"current": "#00e5ff", None: "#ffd400", "accept": "#30d030", "reject": "#ff3030", "missed": "#ff8c00"}
QUEUE_SHADER = "void main() {\n  setColor(prop_color());\n}\n"
MISSED_SHADER = "void main() {\n  setColor(vec3(1.0, 0.55, 0.0));\n  setPointMarkerSize(12.0);\n}\n"
PROB_SHADER = """#uicontrol vec3 color color(default="{color}")
#uicontrol float opacity slider(min=0, max=1, default=0.5)
void main() {{
  float v = toNormalized(getDataValue());
  emitRGBA(vec4(color, v * opacity));
}}
"""


# ----------------------------------------------------------------------------- the session
class ReviewSession:
    """The review of one target's queue: the current item, the decisions, moving between items.

    Thread-safe (the viewer's key actions run on neuroglancer's server thread)."""

    def __init__(self, workspace: str | Path, target: str, author: str | None = None):
        from connectome.workspace import Workspace

        self.folder = review_dir(workspace, target)
        self.workspace = Path(workspace)
        self.target = target
        self.author = author
        ws = Workspace.open(workspace, mode="r")
        self.items: list[Item] = read_queue(self.folder / QUEUE)
        check_identity(read_review_json(self.folder).get("workspace"), ws, str(self.folder / REVIEW_JSON))
        if not self.items:
            raise UserInputError(f"{self.folder / QUEUE}: the queue is empty (plan one with `connectome review plan`)")
        if author is not None:
            author_name(author)  # exit 2 unless one line
        self.ws = ws
        self._by_id = {it.item_id: k for k, it in enumerate(self.items)}
        self.decided: dict[str, str] = {}
        self.points: dict[str, list[tuple[int, int, int]]] = {}
        self.reload()
        self._lock = threading.RLock()
        first = self._first_undecided(0)
        self.index: int = 0 if first is None else first
        self.message = ""

    def reload(self) -> None:
        """Read the decisions and missed points again (the files are the truth: another
        reviewer, or `review decide`, may have added rows)."""
        from connectome.review.decisions import latest_decisions, missed_points

        self.decided = {
            item_id: row["decision"]
            for item_id, row in latest_decisions(self.workspace, self.target).items()
            if item_id in self._by_id
        }
        self.points = {k: list(v) for k, v in missed_points(self.workspace, self.target).items() if k in self._by_id}

    # -------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.items)

    @property
    def current(self) -> Item:
        return self.items[self.index]

    @property
    def n_decided(self) -> int:
        return len(self.decided)

    @property
    def done(self) -> bool:
        return len(self.decided) == len(self.items)

    def decision(self, item: Item | str) -> str | None:
        return self.decided.get(item if isinstance(item, str) else item.item_id)

    def _first_undecided(self, start: int) -> int | None:
        """The first undecided item at or after ``start``, wrapping around; None if all are."""
        n = len(self.items)
        for k in range(n):
            j = (start + k) % n
            if self.items[j].item_id not in self.decided:
                return j
        return None

    def status(self) -> str:
        it = self.current
        head = f"item {self.index + 1}/{len(self.items)} {it.item_id} {it.kind}: {it.reason}"
        dec = self.decision(it) or "not yet"
        tail = f" — decided: {dec} ({self.n_decided}/{len(self.items)} decided)"
        if self.done:
            tail += "; all items decided"
        return head + tail + (f" — {self.message}" if self.message else "")

    # -------------------------------------------------------------- moving
    def go(self, index: int) -> Item:
        with self._lock:
            self.index = max(0, min(len(self.items) - 1, int(index)))
            return self.current

    def next(self) -> Item:
        with self._lock:
            self.message = "last item of the queue" if self.index == len(self.items) - 1 else ""
            return self.go(self.index + 1)

    def prev(self) -> Item:
        with self._lock:
            self.message = "first item of the queue" if self.index == 0 else ""
            return self.go(self.index - 1)

    # -------------------------------------------------------------- deciding
    def decide(self, decision: str, point: Sequence[float] | None = None) -> dict:
        """Record ``decision`` on the current item at once (atomically, in decisions.csv).

        ``accept`` / ``reject`` then move on to the next undecided item; ``missed`` needs a
        ``point`` (z, y, x voxels of raw) inside the item's box (else :class:`UserInputError`,
        nothing written) and stays on the item, so several missed objects in one box can be
        marked; ``n`` moves on."""
        from connectome.review.decisions import decide as _decide

        with self._lock:
            item = self.current
            if decision == "missed":
                if point is None or len(point) != 3 or not all(math.isfinite(float(v)) for v in point):
                    raise UserInputError("missed: put the mouse on the missed object (inside the item's box)")
                pt = tuple(int(math.floor(float(v))) for v in point)
                if not all(item.box[k] <= pt[k] < item.box[k + 3] for k in range(3)):
                    raise UserInputError(
                        f"missed: the point {list(pt)} (z,y,x) lies outside item {item.item_id}'s box "
                        f"{list(item.box)}; nothing recorded"
                    )
                point = pt
            elif point is not None:
                raise UserInputError(f"only a 'missed' decision has a point (got {decision!r})")
            row = _decide(self.workspace, self.target, item.item_id, decision, author=self.author, point=point)
            self.reload()  # the files are the truth: ours is in them now
            if decision == "missed":
                self.message = f"recorded missed at z,y,x {row['point']} (m: another, n: next)"
            else:
                nxt = self._first_undecided(self.index + 1)
                self.message = f"{item.item_id}: {decision}"
                if nxt is not None:
                    self.index = nxt
            return row


# ----------------------------------------------------------------------------- geometry
def box_xyz(item: Item) -> tuple[list[float], list[float]]:
    """The item's half-open voxel box as neuroglancer corners (x, y, z order)."""
    z0, y0, x0, z1, y1, x1 = item.box
    return [float(x0), float(y0), float(z0)], [float(x1), float(y1), float(z1)]


def centre_xyz(item: Item) -> list[float]:
    """The centre of the item's box (x, y, z, continuous voxel coordinates)."""
    a, b = box_xyz(item)
    return [(u + v) / 2 for u, v in zip(a, b)]


def _extent(item: Item, voxel_size_nm: Sequence[float]) -> float:
    """The box's largest side in canonical voxels (the smallest voxel size)."""
    extent_nm = [(item.box[k + 3] - item.box[k]) * float(voxel_size_nm[k]) for k in range(3)]
    return max(extent_nm) / min(float(v) for v in voxel_size_nm)


def fit_scale(item: Item, voxel_size_nm: Sequence[float]) -> float:
    """A cross-section zoom (canonical voxels per screen pixel) at which the box fits a panel."""
    return max(_extent(item, voxel_size_nm) / PANEL_PX * 1.3, 0.05)


# ----------------------------------------------------------------------------- lazy volumes
class LazyArray:
    """A zarr array (or one channel of a channel-first one) as LocalVolume reads it: shape,
    dtype and slicing, read chunk by chunk on demand. ``transpose()`` (neuroglancer's mesh
    generator wants the whole volume in x, y, z order) reads it whole, up to MESH_MAX_BYTES."""

    def __init__(self, array, channel: int | None = None):
        self._array = array
        self._channel = channel
        shape = tuple(int(s) for s in array.shape)
        self.shape = shape[1:] if channel is not None else shape
        self.dtype = array.dtype

    def __getitem__(self, index):
        import numpy as np

        if not isinstance(index, tuple):
            index = (index,)
        if self._channel is not None:
            index = (self._channel, *index)
        return np.asarray(self._array[index])

    def transpose(self):
        import numpy as np
        from neuroglancer.local_volume import MeshesNotSupportedForVolume

        if math.prod(self.shape) * np.dtype(self.dtype).itemsize > MESH_MAX_BYTES:
            raise MeshesNotSupportedForVolume()
        return np.ascontiguousarray(self[tuple(slice(None) for _ in self.shape)].transpose())


def target_layers(ws, target: str) -> list[dict[str, Any]]:
    """The workspace arrays shown for ``target`` (only those that exist): dicts of ``name``,
    ``array`` (a :class:`LazyArray`), ``type`` (image | segmentation) and layer options."""
    if not ws.has("raw"):
        ws.array("raw")  # the workspace's own error, with the command that makes it
    from connectome.viewer.state import VESSEL_SHADER

    specs: list[dict[str, Any]] = [{"name": "raw", "array": LazyArray(ws.array("raw")), "type": "image"}]

    def add(name: str, kind: str, channel: int | None = None, **options) -> None:
        if ws.has(name):
            specs.append({"name": name, "array": LazyArray(ws.array(name), channel), "type": kind, **options})

    if target == "vessels":
        add("vessel_prob", "image", shader=PROB_SHADER.format(color="#00ffff"))
        add("vessel_mask", "image", shader=VESSEL_SHADER)
    elif target == "synapses":
        add("synapse_prob", "image", shader=PROB_SHADER.format(color="#ff00ff"))
        add("segmentation", "segmentation", selected_alpha=0.3, visible=False)
    else:
        add("segmentation", "segmentation", selected_alpha=0.35)
        if ws.has("boundary") and len(ws.array("boundary").shape) == 4:
            add("boundary", "image", channel=0, visible=False)
        elif ws.has("boundary"):
            add("boundary", "image", visible=False)
    return specs


# ----------------------------------------------------------------------------- the state
def _dims(names: Sequence[str], scales: Sequence[float]):
    import neuroglancer

    return neuroglancer.CoordinateSpace(names=list(names), units="nm", scales=[float(s) for s in scales])


def queue_annotations(session: ReviewSession) -> list:
    import neuroglancer

    out = []
    for k, it in enumerate(session.items):
        a, b = box_xyz(it)
        colour = COLORS["current"] if k == session.index else COLORS[session.decision(it)]
        dec = session.decision(it)
        out.append(
            neuroglancer.AxisAlignedBoundingBoxAnnotation(
                id=it.item_id,
                point_a=a,
                point_b=b,
                description=f"{it.item_id} {it.kind}: {it.reason}" + (f" [{dec}]" if dec else ""),
                props=[colour],
            )
        )
    return out


def missed_annotations(session: ReviewSession) -> list:
    import neuroglancer

    out = []
    for item_id, pts in sorted(session.points.items()):
        for n, (z, y, x) in enumerate(pts):
            out.append(
                neuroglancer.PointAnnotation(
                    id=f"{item_id}-missed-{n + 1}",
                    point=[x + 0.5, y + 0.5, z + 0.5],
                    description=f"missed in {item_id}",
                )
            )
    return out


def build_state(session: ReviewSession, layers: list[dict[str, Any]] | None = None):
    """The neuroglancer ``ViewerState`` of the review: the workspace layers, ``queue`` and
    ``missed``, positioned on the current item."""
    import neuroglancer

    ws = session.ws
    vz, vy, vx = (float(v) for v in ws.voxel_size_nm)
    state = neuroglancer.ViewerState()
    state.dimensions = _dims("xyz", (vx, vy, vz))
    zyx = _dims("zyx", (vz, vy, vx))
    for spec in layers if layers is not None else target_layers(ws, session.target):
        vol = neuroglancer.LocalVolume(data=spec["array"], dimensions=zyx, volume_type=spec["type"])
        if spec["type"] == "segmentation":
            layer: Any = neuroglancer.SegmentationLayer(source=vol, selected_alpha=spec.get("selected_alpha", 0.35))
        else:
            layer = neuroglancer.ImageLayer(source=vol)
            if "shader" in spec:
                layer.shader = spec["shader"]
        state.layers[spec["name"]] = layer
        if spec.get("visible") is False:
            state.layers[spec["name"]].visible = False  # a ManagedLayer property, not the layer's
    state.layers["queue"] = neuroglancer.LocalAnnotationLayer(
        dimensions=state.dimensions,
        annotation_properties=[neuroglancer.AnnotationPropertySpec(id="color", type="rgb", default=COLORS[None])],
        annotations=queue_annotations(session),
        shader=QUEUE_SHADER,
    )
    state.layers["missed"] = neuroglancer.LocalAnnotationLayer(
        dimensions=state.dimensions, annotations=missed_annotations(session), shader=MISSED_SHADER
    )
    state.layout = "4panel"
    state.selected_layer.layer = "queue"
    place(state, session)
    return state


def place(state, session: ReviewSession) -> None:
    """Put the view on the current item: position at its box centre, zoom to fit it."""
    it = session.current
    state.position = centre_xyz(it)
    state.cross_section_scale = fit_scale(it, session.ws.voxel_size_nm)
    state.projection_scale = max(_extent(it, session.ws.voxel_size_nm) * 3.0, 1.0)


# ----------------------------------------------------------------------------- the viewer
def _is_loopback(bind: str) -> bool:
    import ipaddress

    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


class ReviewViewer:
    """A :class:`ReviewSession` in a ``neuroglancer.Viewer`` on neuroglancer's server."""

    def __init__(
        self, session: ReviewSession, bind: str = "127.0.0.1", port: int = 0, exit_when_done: bool = False
    ) -> None:
        import neuroglancer
        import neuroglancer.server as ng_server

        if not 0 <= int(port) <= 65535:
            raise UserInputError(f"--port: expected 0..65535, got {port}")
        self.session = session
        self.exit_when_done = exit_when_done
        self.finished = threading.Event()  # set when all are decided (with exit_when_done) or on stop
        running = ng_server.global_server
        if running is not None and (running._bind_address, running._bind_port) != (bind, int(port)):
            neuroglancer.stop()  # the server listens where an earlier viewer asked: restart it here
        neuroglancer.set_server_bind_address(bind, int(port))
        try:
            ng_server.start()
        except OSError as exc:
            raise UserInputError(f"--bind {bind} --port {port}: cannot listen there ({exc.strerror or exc})") from None
        # no credentials for other data sources: the viewer serves the workspace and the queue only
        self.viewer = neuroglancer.Viewer(allow_credentials=False)
        for action, what in KEYS.values():
            self.viewer.actions.add(action, self._handler(what))
        self.viewer.set_state(build_state(session))
        with self.viewer.config_state.txn() as c:
            for key, (action, _what) in KEYS.items():
                c.input_event_bindings.viewer[key] = action
            c.status_messages["review"] = session.status()
            c.status_messages["keys"] = KEY_HELP
        if exit_when_done and session.done:
            self.finished.set()

    @property
    def url(self) -> str:
        return self.viewer.get_viewer_url()

    @property
    def server_address(self) -> tuple[str, int]:
        """(host, port) of the listening socket."""
        import neuroglancer.server as ng_server

        srv = ng_server.global_server
        sock = next(iter(srv.http_server._sockets.values()))
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    # -------------------------------------------------------------- actions
    def _handler(self, what: str):
        def handle(action_state) -> None:
            try:
                self.act(what, action_state)
            except UserInputError as exc:
                self.session.message = str(exc)
                self.refresh(move=False)
            except Exception as exc:  # shown, never silently dropped; the session goes on
                log.exception("review open: %s failed", what)
                self.session.message = f"{what} failed: {type(exc).__name__}: {exc}"
                self.refresh(move=False)

        return handle

    def act(self, what: str, action_state=None) -> None:
        """Run the key ``what`` (accept | reject | missed | next | previous)."""
        s = self.session
        if what == "next":
            s.next()
        elif what == "previous":
            s.prev()
        elif what in ("accept", "reject"):
            s.decide(what)
        elif what == "missed":
            mouse = getattr(action_state, "mouse_voxel_coordinates", None) if action_state is not None else None
            point = None if mouse is None else (mouse[2], mouse[1], mouse[0])  # x, y, z -> z, y, x
            s.decide("missed", point=point)
        else:
            raise ValueError(what)
        self.refresh(move=what != "missed")
        if self.exit_when_done and s.done:
            self.finished.set()

    def refresh(self, move: bool = True) -> None:
        """Push the session to the browser: annotations, status and (``move``) the position."""
        s = self.session
        with self.viewer.txn() as st:
            st.layers["queue"].annotations = queue_annotations(s)
            st.layers["missed"].annotations = missed_annotations(s)
            if move:
                place(st, s)
        with self.viewer.config_state.txn() as c:
            c.status_messages["review"] = s.status()
        log.info("review open: %s", s.status())

    def stop(self) -> None:
        import neuroglancer

        self.finished.set()
        neuroglancer.stop()


def open_review(
    workspace: str | Path,
    target: str,
    bind: str = "127.0.0.1",
    port: int = 0,
    author: str | None = None,
    exit_when_done: bool = False,
) -> ReviewViewer:
    """Validate the review and start serving it (returns at once; :meth:`ReviewViewer.stop`)."""
    return ReviewViewer(ReviewSession(workspace, target, author), bind=bind, port=port, exit_when_done=exit_when_done)


def run_open(args) -> int:
    """``connectome review open``: serve until Ctrl-C / SIGTERM (exit 0), or with
    ``--exit-when-done`` until every item has a decision."""
    stop = threading.Event()
    with _stop_on_signals(stop):
        s = ReviewSession(args.workspace, args.target, args.author)
        print(
            f"review open: {len(s)} items of {s.folder / QUEUE}, {s.n_decided} decided; "
            + (
                "all items decided"
                if s.done
                else f"starting at item {s.index + 1} ({s.current.item_id}); decisions go to {s.folder / 'decisions.csv'}"
            )
        )
        if s.done and args.exit_when_done:
            return 0
        app = ReviewViewer(s, bind=args.bind, port=args.port, exit_when_done=args.exit_when_done)
        try:
            if not _is_loopback(args.bind):
                print(
                    f"review open: warning: listening on {args.bind}, not loopback: whoever reaches it can see "
                    "the workspace and make decisions"
                )
            print(app.url)
            print(KEY_HELP)
            print("Ctrl-C to stop" + (" (or decide every item)" if args.exit_when_done else ""))
            sys.stdout.flush()
            while not stop.is_set() and not app.finished.is_set():
                stop.wait(0.25)
            if app.finished.is_set() and s.done:
                time.sleep(1.0)  # let the browser receive the last status before the server goes
            print(f"review open: stopped; {s.n_decided}/{len(s)} items decided ({s.folder / 'decisions.csv'})")
            return 0
        finally:
            app.stop()


@contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGINT and SIGTERM set ``stop`` instead of killing the process (main thread only; the
    previous handlers come back on the way out)."""
    old: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
