"""The KServe v2 / Open Inference Protocol front end (inference.GRPCInferenceService).

A second front end beside the native one, over the same core and its step
pipeline. Its generated stubs (seqserve.api.inference_pb2) define the same
protobuf symbols as tritonclient's, so nothing a client imports pulls them in.
"""
