"""The serving core: transport-free, imported by every front end, importing none.

    sessions    SessionManager, the facade the front ends call
    pipeline    one stream of typed steps in, answers out, in each session's order
    validation  the checks of what a request carries, one set of messages
    directory   the session directory interface (implemented in seqserve.store)
    versions    one model version: its slab and its batcher
    batcher     continuous batching: when and where rounds run (work: units and Order)
    rounds      the arithmetic of a round (batchplan: the batch path's requests)
    slab        session state in a few arrays, and its single commit
    runtime     ONNX Runtime sessions (repository: the folder walk; spec: model.json)
    errors, settings, heap

Importing this package loads nothing: ONNX Runtime comes with runtime.
"""
