"""Bidirectional inference streams (KServe V2 ``ModelStreamInfer``), served the same
way by the router and the runtime.

Each request on a stream is handled on its own (routed by its own model id, may
wait for a load), concurrently with the others up to ``max_in_flight``; a
request's response is written only after every earlier request *of the same
model* has been answered, so responses of one model keep their order while a
slow model never holds back another. A failing request answers with
``error_message`` (and its ``id``) and the stream stays open. Cancelling the
stream (client gone, deadline) cancels every request still running: all of them
live in one TaskGroup owned by the call.

Wire helpers work on raw bytes so the router never deserialises tensors:
``ModelStreamInferResponse`` is ``error_message`` (field 1) and
``infer_response`` (field 2, a ModelInferResponse).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tritonclient.grpc import service_pb2 as pb

from mesh.errors import MeshError
from mesh.protowire import encode_varint

T = TypeVar("T")

#: Requests of one stream handled at once (backpressure: the stream is read no faster).
DEFAULT_MAX_IN_FLIGHT = 64


def ok_response(infer_response: bytes) -> bytes:
    """A ModelStreamInferResponse wrapping a serialised ModelInferResponse, without re-encoding it."""
    return b"\x12" + encode_varint(len(infer_response)) + infer_response


def error_response(message: str, request_id: str, model_name: str) -> bytes:
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id=request_id, model_name=model_name),
    ).SerializeToString()


@dataclass(slots=True)
class _Turn:
    """When the previous request of the same model has been written."""

    done: asyncio.Event


async def serve_stream(
    requests: AsyncIterator[T],
    write: Callable[[bytes], Awaitable[None]],
    key_of: Callable[[T], str],
    handle: Callable[[T], Awaitable[bytes]],
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    on_in_flight: Callable[[int], None] | None = None,
) -> None:
    """Reads ``requests`` to the end, answering each with ``handle`` (which must turn
    per-request failures into error responses itself) and ``write``-ing the answers
    in per-``key_of`` order. Returns when every request is answered."""
    slots = asyncio.Semaphore(max_in_flight)
    write_lock = asyncio.Lock()
    last: dict[str, _Turn] = {}

    async def one(raw: T, key: str, prev: _Turn | None, mine: _Turn) -> None:
        if on_in_flight:
            on_in_flight(1)
        try:
            answer = await handle(raw)
            if prev is not None:
                await prev.done.wait()
            async with write_lock:
                try:
                    await write(answer)
                except Exception as e:  # noqa: BLE001 - grpc raises its own batch errors once the peer is gone
                    raise _StreamGone() from e
        finally:
            mine.done.set()
            if last.get(key) is mine:
                del last[key]
            slots.release()
            if on_in_flight:
                on_in_flight(-1)

    try:
        async with asyncio.TaskGroup() as tg:
            async for raw in requests:
                await slots.acquire()
                key = key_of(raw)
                mine = _Turn(asyncio.Event())
                prev = last.get(key)
                last[key] = mine
                tg.create_task(one(raw, key, prev, mine))
    except* _StreamGone:
        pass  # the client went away: what was still running was cancelled with the group


class _StreamGone(Exception):
    """An answer could not be written: the stream is over."""


def failure_message(e: BaseException) -> str:
    """What a client sees in ``error_message``: the status name and our message, never a trace."""
    if isinstance(e, MeshError):
        return f"{e.code}: {e}"
    return f"INTERNAL: {type(e).__name__}"


