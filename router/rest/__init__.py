"""The router's REST front door: KServe V1 and V2 (Open Inference Protocol) over HTTP/1.1.

``app`` (aiohttp routes and the server), ``paths`` (model names in URLs),
``tensors`` (JSON/binary data <-> numpy), ``v2`` and ``v1`` (the two codecs),
``errors`` (the error tree as HTTP statuses). Every request becomes a V2
``ModelInferRequest`` handed to :class:`router.core.InferenceCore`.
"""
