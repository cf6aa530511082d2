"""Helper of test_training_horovod.py, run by mpiexec/horovodrun: the toy job of
test_training.py trained data-parallel; every rank writes its result (with the digests of the
weights each rank computed for itself)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_training import CFG, ToyJob  # noqa: E402

from connectome.training.distributed import horovod_session  # noqa: E402
from connectome.training.loop import run_training  # noqa: E402

out = Path(sys.argv[1])
cfg = CFG.__class__(**json.loads(os.environ["TOY_CFG"])) if os.environ.get("TOY_CFG") else CFG
with horovod_session("horovod") as s:
    res = run_training(ToyJob(), cfg, out / "work", s)
    (out / f"rank{s.rank}.json").write_text(json.dumps(res.to_json()))
