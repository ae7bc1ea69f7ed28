"""seqserve: stateful streaming inference of recurrent sequence models over gRPC.

Layers, one subpackage each: `seqserve.core` (the transport-free serving core),
`seqserve.store` (where sessions live), `seqserve.grpc` (the gRPC server and its
native seqserve.v1 front end), `seqserve.client` (Python clients), `seqserve.bench`
(the benchmark) and `seqserve.models` (training and export, the `train` extra);
`seqserve.cli` is the `seqserve` command. Importing `seqserve` loads nothing heavy.
"""

__version__ = "0.1.0"
