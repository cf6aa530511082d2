"""Stage 1 of the pipeline: stitching tiles into section montages, and aligning the sections.

Modules (each small, each owning its conventions):

* :mod:`.manifest`      reading and validating the tile manifest and the tile images
* :mod:`.pairwise`      registration of two images: NCC of overlap strips (stitching) and
  windowed phase correlation of square patches (alignment), both with peak quality and
  subpixel peaks
* :mod:`.solve`         robust least squares of tile positions from pairwise offsets
* :mod:`.render`        tile gain estimation and montage rendering with linear feathering
* :mod:`.store`         where the montages live in a workspace (``WS/stitch/montages.zarr``)
* :mod:`.stitch_stage`  ``connectome stitch`` (blocks = sections); :mod:`.stitch_report` its QC tables
* :mod:`.warp`          displacement grids (the stored form of a section transform), affines
* :mod:`.align`         coarse affine + elastic registration of one section pair, fold detection
* :mod:`.align_store`   where alignment keeps matches and transforms; planning helpers
* :mod:`.compose`       composition of the section transforms along z (bridging, drift control)
* :mod:`.align_stage`   ``connectome align`` (blocks = sections, then (z, y, x) boxes);
  :mod:`.align_report` its QC table and previews
* :mod:`.qc`            NCC, CSV tables, PNG previews
* :mod:`.testdata`      known-answer tile sets (one texture, known transforms) for tests and benchmarks

Pixel conventions (used everywhere in this package)
---------------------------------------------------
Pixel *centres* lie on the integer grid: array element ``[i, j]`` of an image sits at the point
``(y, x) = (i, j)``. A tile whose top-left position is ``(x, y)`` (the manifest's and the tables'
order of columns) puts its element ``[i, j]`` at ``(y + i, x + j)`` of its section's montage
frame. There is no half-pixel shift anywhere: a position is the coordinate of element
``[0, 0]``'s centre.

::

    montage frame of a section (origin = top-left of tile (row 0, col 0) of that section)
      (0,0) +-----------+.......
            | tile(0,0) |  tile(0,1) at (x01, y01), x01 ~ tile width - overlap
            +-----------+.......
            :  tile(1,0) ...

Points are written ``(y, x)`` in arrays (``*_yx`` names) and as ``x, y`` columns in CSVs.

The *aligned frame* is section 0's montage frame (the first section that has tiles, if section
0 is missing); ``WS/volume.zarr`` covers it. A section transform ``T_z`` maps a point ``p`` of
the aligned frame to the point ``T_z(p)`` of section ``z``'s montage frame; the aligned section
is ``raw[z](p) = montage_z(T_z(p))``.
"""
