"""The review loop (issue 23): rank where a person's time helps most, record their decisions and
import their dense corrections, in a form that fine-tuning reads back.

Modules (imports point down only; nothing here loads a model or a GUI)::

    commands     the CLI run functions (connectome review plan | decide | import)
    plan         plan a queue: candidates -> strategy -> WS/review/<target>/queue.csv + review.json
    candidates   what can be reviewed per target (vessel boxes, synapses, segment pairs/segments)
    strategies   how candidates are ranked: a registry ("uncertainty", "random")
    decisions    WS/review/<target>/decisions.csv (accept | reject | missed), appended atomically
    corrections  dense corrections: import a painted label volume, load_corrections() for training
    queue        the queue's format (columns, reader, writer), review folders, workspace identity

File formats: docs/review.md and docs/contract.md.
"""
