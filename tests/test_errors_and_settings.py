"""The error tree's gRPC mapping and the settings parsers."""

from __future__ import annotations

import grpc
import pytest

from mesh import errors
from mesh.grpc_errors import status_code, translate_errors
from mesh.settings import CommonSettings, parse_bytes, parse_host_port


@pytest.mark.parametrize(
    "err,code",
    [
        (errors.InvalidModelId("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.RegistryUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.Conflict("x"), grpc.StatusCode.ABORTED),
        (errors.CorruptRecord("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_every_error_has_one_status(err: errors.MeshError, code: grpc.StatusCode) -> None:
    assert status_code(err) == code


def test_retryable_flags() -> None:
    assert errors.Unavailable("x").retryable and not errors.InvalidArgument("x").retryable
    assert errors.ModelLoadFailed("x", retryable=True).retryable
    assert not errors.ModelLoadFailed("x").retryable


class _Ctx:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, msg: str) -> None:
        self.aborted = (code, msg)
        raise grpc.aio.AbortError()


async def test_unexpected_exceptions_become_internal_without_a_traceback() -> None:
    class Svc:
        @translate_errors
        async def Boom(self, request, context):  # noqa: N802
            raise KeyError("secret internals")

    ctx = _Ctx()
    with pytest.raises(grpc.aio.AbortError):
        await Svc().Boom(None, ctx)
    assert ctx.aborted is not None
    code, msg = ctx.aborted
    assert code == grpc.StatusCode.INTERNAL
    assert "incident" in msg and "secret" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("text,n", [(1024, 1024), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9), ("1.5GiB", 3 * 2**29)])
def test_parse_bytes(text: object, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["lots", "-1", "12XB", -5])
def test_parse_bytes_refuses(bad: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="size"):
        parse_bytes(bad)


def test_host_port() -> None:
    assert parse_host_port("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    with pytest.raises(errors.InvalidArgument, match="HOST:PORT"):
        parse_host_port("localhost")


def test_settings_read_env_when_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_ETCD", "10.0.0.1:2379")
    monkeypatch.setenv("MESHSERVE_MESH", "prod")
    s = CommonSettings()
    assert (s.etcd, s.mesh) == ("10.0.0.1:2379", "prod")
    assert CommonSettings(etcd="127.0.0.1:1").etcd == "127.0.0.1:1"  # explicit wins


def test_settings_refuse_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mesh name"):
        CommonSettings(mesh="Bad Name")
    with pytest.raises(ValidationError, match="HOST:PORT"):
        CommonSettings(etcd="nope")
