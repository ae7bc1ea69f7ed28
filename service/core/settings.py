"""Settings of the serving core.

`CoreSettings` holds what the session manager, the batchers and the runtime
need; it knows nothing of flags, environment variables or the transport
(seqserve.settings builds it from the `seqserve serve` configuration).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoreSettings:
    """Limits and knobs of the serving core (sessions, batching, ONNX Runtime)."""

    session_ttl_s: float = 900.0  # idle time after which a session is evicted
    max_sessions: int = 100_000  # open sessions over all models
    max_batch: int = 1024  # rows (sessions) per ONNX Runtime call
    batch_delay_us: int = 0  # optional wait before a round, to trade latency for batch size
    max_steps_per_request: int = 4096  # T of one request, and the forecast horizon
    max_queue: int = 65536  # steps waiting per model version before ResourceExhausted
    ort_threads: int = 1  # intra-op threads of each InferenceSession
    max_sessions_per_principal: int = 0  # open sessions of one principal; 0: no quota

    def __post_init__(self) -> None:
        checks = {
            "session_ttl_s": self.session_ttl_s > 0,
            "max_sessions": self.max_sessions >= 1,
            "max_batch": self.max_batch >= 1,
            "batch_delay_us": self.batch_delay_us >= 0,
            "max_steps_per_request": self.max_steps_per_request >= 1,
            "max_queue": self.max_queue >= 1,
            "ort_threads": self.ort_threads >= 1,
            "max_sessions_per_principal": self.max_sessions_per_principal >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(
                f"invalid core settings: {values} (expected > 0; batch_delay_us may be 0)"
            )
