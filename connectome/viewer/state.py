"""The neuroglancer state for an export, and the URL that carries it.

Defaults: 4-panel layout (xy, xz, yz image panels + 3D), position at the volume centre, zoom
that fits the volume, ``raw`` as image, ``segmentation`` with its largest segments selected
(their meshes in 3D), ``vessel_mask`` as a translucent red overlay, and ``synapses`` linked to
the segmentation through both relationships (``pre_segment``, ``post_segment``) with
``filterBySegmentation``, so selecting a segment shows its synapses.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

DEFAULT_CLIENT_URL = "https://neuroglancer-demo.appspot.com/"
PANEL_PX = 350  # assumed panel size when fitting the zoom

VESSEL_SHADER = """#uicontrol float opacity slider(min=0, max=1, default=0.45)
void main() {
  float on = toNormalized(getDataValue()) > 0.0 ? 1.0 : 0.0;
  emitRGBA(vec4(1.0, 0.1, 0.1, on * opacity));
}
"""
SYNAPSE_SHADER = """void main() {
  setColor(vec3(1.0, 0.85, 0.0));
  setPointMarkerSize(10.0);
}
"""


def build_state(manifest: dict, data_url: str) -> dict:
    """The state for an export described by ``manifest`` (``OUT/connectome.json``) whose layer
    folders are at ``data_url`` (``http(s)://``, ``gs://``, ``s3://`` ...)."""
    base = data_url.rstrip("/")
    z, y, x = (int(v) for v in manifest["shape_zyx"])
    rz, ry, rx = (float(v) for v in manifest["voxel_size_nm"])
    layers_present = manifest.get("layers", {})
    canonical = min(rx, ry, rz)
    extent_xy = max(x * rx, y * ry) / canonical
    extent_3d = max(x * rx, y * ry, z * rz) / canonical
    state: dict = {
        "dimensions": {"x": [rx * 1e-9, "m"], "y": [ry * 1e-9, "m"], "z": [rz * 1e-9, "m"]},
        "position": [x / 2, y / 2, z / 2],
        "crossSectionScale": max(extent_xy / PANEL_PX * 1.1, 0.05),
        "projectionScale": extent_3d * 1.6,
        "layout": "4panel",
        "layers": [],
    }
    if "raw" in layers_present:
        state["layers"].append({"type": "image", "name": "raw", "source": f"precomputed://{base}/raw"})
    if "segmentation" in layers_present:
        state["layers"].append(
            {
                "type": "segmentation",
                "name": "segmentation",
                "source": f"precomputed://{base}/segmentation",
                "segments": [str(s) for s in manifest.get("largest_segments", [])],
                "selectedAlpha": 0.35,
            }
        )
    if "boundary" in layers_present:  # the learned boundary map, off until switched on
        state["layers"].append(
            {"type": "image", "name": "boundary", "source": f"precomputed://{base}/boundary", "visible": False}
        )
    if "vessel_mask" in layers_present:
        state["layers"].append(
            {
                "type": "image",
                "name": "vessel_mask",
                "source": f"precomputed://{base}/vessel_mask",
                "shader": VESSEL_SHADER,
            }
        )
    if "synapses" in layers_present:
        layer: dict[str, Any] = {
            "type": "annotation",
            "name": "synapses",
            "source": f"precomputed://{base}/synapses",
            "shader": SYNAPSE_SHADER,
        }
        if "segmentation" in layers_present:
            layer["linkedSegmentationLayer"] = {"pre_segment": "segmentation", "post_segment": "segmentation"}
            layer["filterBySegmentation"] = ["pre_segment", "post_segment"]
        state["layers"].append(layer)
    if state["layers"]:
        state["selectedLayer"] = {"layer": state["layers"][0]["name"]}
    return state


def state_url(client_url: str, state: dict) -> str:
    """``CLIENT#!<url-encoded JSON>`` (neuroglancer's own URL form)."""
    text = json.dumps(state, separators=(",", ":"))
    return client_url + "#!" + quote(text, safe="/:,{}[]\"'@=+-_.~!*()$")
