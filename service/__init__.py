"""seqserve: stateful streaming inference of recurrent sequence models over gRPC.

Subpackages and modules: `service.server` (the grpc.aio server), `service.client`
(Python clients), `service.cli` (the `seqserve` command), and the serving core
(`service.sessions`, `service.batcher`, `service.slab`, `service.runtime`).
Importing `service` itself loads nothing heavy.
"""

__version__ = "0.1.0"
