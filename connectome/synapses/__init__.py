"""Synapses: the synapse table, cleft detection from ``synapse_prob`` and partner assignment.

* :mod:`.table`    ``WS/synapses.csv``: columns, the checked reader, :func:`write_synapses_csv`
* :mod:`.detect`   blockwise cleft detection: threshold, 3D components joined across block
  borders, minimum size; :func:`detect_synapses` runs it on a workspace
* :mod:`.partners` the pre/post partner rule (:func:`assign_partners`)

The model that predicts ``synapse_prob`` (and the post-side signal) is not here: the
``connectome synapses`` stage runs it and then calls :func:`detect_synapses`. Nothing heavy
is imported by this package.
"""
