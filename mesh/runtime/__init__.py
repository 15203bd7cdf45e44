"""The runtime process (``meshserve runtime``): many models in one process.

- ``settings``: RuntimeSettings (flags and MESHSERVE_* variables).
- ``backends/``: ONNX Runtime and TorchScript behind one small interface.
- ``tensors``: KServe V2 tensors <-> numpy, checked against a model's signature.
- ``cache``: size accounting and the pluggable victim choice (LRU by default).
- ``sizing``: capacity and load-size measurement (RSS / CUDA memory).
- ``loader``: single-flight, bounded, timed, cancel-safe loads and unloads.
- ``spi`` / ``inference``: the mmesh.ModelRuntime and V2 inference servicers.
- ``registration``: the instance record and copy keys under one etcd lease.
- ``metrics``: Prometheus metrics on an explicit registry.
- ``server``: wires it all on one gRPC port; start() / stop().
"""
