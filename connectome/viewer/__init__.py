"""Neuroglancer inspection: export the workspace as precomputed layers, serve them with the
bundled neuroglancer client, build the viewer state, take headless screenshots.

* :mod:`connectome.viewer.export` - ``connectome export-precomputed`` (incremental, blockwise);
* :mod:`connectome.viewer.volumes` - image / segmentation pyramids through cloud-volume;
* :mod:`connectome.viewer.mesh` - marching-cubes meshes in the precomputed (legacy) mesh format;
* :mod:`connectome.viewer.annotations` - the synapse annotation layer (sharded, with relationships);
* :mod:`connectome.viewer.state` - the neuroglancer state and URL;
* :mod:`connectome.viewer.serve` - the HTTP server (CORS, Content-Encoding, the client bundle);
* :mod:`connectome.viewer.screenshot` - headless Chromium screenshots.

Nothing here is imported by ``import connectome``; cloud-volume, neuroglancer and selenium are
the ``viewer`` extra.
"""
