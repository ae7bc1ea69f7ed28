"""The gRPC server and its native front end, seqserve.v1.Inference.

server        lifecycle: startup, serve, shutdown; health and reflection
servicer      protobuf in, typed core calls, protobuf out
streams       StepStream: conversion at both ends of the core's step pipeline
status        the one table from exceptions to status codes
registration  the service's handlers, with undecodable requests refused
"""
