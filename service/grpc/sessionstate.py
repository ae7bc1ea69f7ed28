"""ExportSession and ImportSession on the wire: a session's state as protobuf tensors.

Tensors travel as float32 little-endian bytes with their shapes, so the
message can be read without seqserve; the checksum is the core's, over its
canonical encoding of the same values (seqserve.core.snapshots).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from seqserve.api import seqserve_pb2 as pb
from seqserve.core.errors import InvalidArgument
from seqserve.core.snapshots import EXPORT_FORMAT, SessionExport

F32 = npt.NDArray[np.float32]


def tensor(name: str, values: F32) -> pb.Tensor:
    return pb.Tensor(name=name, shape=list(values.shape), data=values.astype("<f4").tobytes())


def values(t: pb.Tensor, what: str) -> F32:
    """A tensor's values in its shape, or InvalidArgument when its bytes do not fill it."""
    shape = tuple(int(d) for d in t.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if len(t.data) != 4 * count:
        raise InvalidArgument(
            f"{what}: expected {4 * count} bytes of float32 for shape {list(shape)}, "
            f"got {len(t.data)}"
        )
    return np.frombuffer(t.data, "<f4").astype(np.float32).reshape(shape)


def to_pb(e: SessionExport) -> pb.SessionState:
    r = len(e.starts)
    return pb.SessionState(
        format=EXPORT_FORMAT,
        session_id=e.session_id,
        model=e.model,
        version=e.version,
        position=e.position,
        states=[tensor(name, v.reshape(shape)) for name, shape, v in e.states],
        last_output=tensor("last_output", e.last_output),
        answers=pb.RetainedAnswers(
            count=e.count,
            starts=e.starts.astype(np.uint64).tolist(),
            digests=e.digests.tolist(),
            outputs=tensor("outputs", e.outputs.reshape(r, -1)),
            long=[
                pb.LongAnswer(ring=ring, outputs=tensor("outputs", a)) for ring, a in e.long.items()
            ],
        ),
        last_access=e.last_access,
        checksum=e.checksum,
    )


def from_pb(m: pb.SessionState) -> SessionExport:
    if m.format != EXPORT_FORMAT:
        raise InvalidArgument(
            f"expected a session state of format {EXPORT_FORMAT!r}, got {m.format!r}"
        )
    a = m.answers
    return SessionExport(
        session_id=m.session_id,
        model=m.model,
        version=m.version,
        position=m.position,
        states=[(t.name, tuple(t.shape), values(t, f"state {t.name!r}")) for t in m.states],
        last_output=values(m.last_output, "last_output"),
        count=a.count,
        starts=np.array(a.starts, np.uint64).astype(np.int64),
        digests=np.array(a.digests, np.uint64),
        outputs=values(a.outputs, "answers.outputs"),
        long={int(x.ring): values(x.outputs, f"answers.long[{x.ring}]") for x in a.long},
        last_access=m.last_access,
        checksum=m.checksum,
    )
