"""TLS at the front door, mTLS between services, API keys: over real TLS on loopback, with certificates from
the throwaway CA `minmo up --tls` uses."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.client.chat import ChatRequest, ConversationClient
from minmo.serving.auth import key_digest, parse_keys
from minmo.serving.certs import make_dev_pki
from minmo.v1 import conversation_pb2, conversation_pb2_grpc

from .test_bad_input import _status
from .test_conversation import _config

KEY, SOLO_KEY, REVOKED_KEY = "key-of-alice", "key-of-bob", "key-of-eve"


@pytest.fixture
async def secure_stack(stack, tmp_path):
    pki = make_dev_pki(tmp_path / "pki")
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "# name sha256 max-sessions\n"
        f"alice {key_digest(KEY)} 4\n"
        f"bob {key_digest(SOLO_KEY)} 1  # one session at a time\n"
        f"eve {key_digest(REVOKED_KEY)} 0\n"
    )
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name, **pki.env())
    await stack.start_duplex(MINMO_API_KEYS_FILE=str(keys), **pki.env())
    return stack, pki


def _secure_stub(stack, pki) -> tuple[grpc.aio.Channel, conversation_pb2_grpc.ConversationStub]:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    channel = grpc.aio.secure_channel(stack.address("duplex"), credentials)
    stack.resources.push_async_callback(channel.close)
    return channel, conversation_pb2_grpc.ConversationStub(channel)


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _opens(stub, metadata) -> tuple[grpc.StatusCode, str] | conversation_pb2.SessionStarted:
    call = stub.Converse(metadata=metadata)
    try:
        await call.write(_config(text_only=True))  # a refused call may already be over before this write
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    call.cancel()
    return first.session_started


async def test_a_turn_over_tls_with_an_api_key_through_mtls_services(secure_stack):
    stack, pki = secure_stack
    async with ConversationClient(stack.address("duplex"), pki.ca.read_bytes(), KEY) as client:
        result = await client.chat(ChatRequest(text="hello over tls", timeout_s=120))
    assert result.problems() == [] and result.turns, result.problems()


async def test_api_keys_are_required_checked_and_bounded(secure_stack):
    stack, pki = secure_stack
    _, stub = _secure_stub(stack, pki)
    code, details = await _status(stub, [_config()])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in details
    code, _ = await _opens(stub, _bearer("not-a-key"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _opens(stub, (("x-api-key", REVOKED_KEY),))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert isinstance(await _opens(stub, (("x-api-key", KEY),)), conversation_pb2.SessionStarted)

    held = stub.Converse(metadata=_bearer(SOLO_KEY))
    await held.write(_config(text_only=True))
    await held.read()
    code, details = await _opens(stub, _bearer(SOLO_KEY))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1" in details
    held.cancel()
    await asyncio.sleep(0.2)
    assert isinstance(await _opens(stub, _bearer(SOLO_KEY)), conversation_pb2.SessionStarted), "the slot came back"


async def test_health_needs_no_key_and_plaintext_is_refused(secure_stack):
    stack, pki = secure_stack
    channel, _ = _secure_stub(stack, pki)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(stack.address("duplex")) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_internal_services_refuse_callers_without_a_client_certificate(secure_stack):
    stack, pki = secure_stack
    request = health_pb2.HealthCheckRequest()
    server_only = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    async with grpc.aio.secure_channel(stack.address("llm"), server_only) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    mutual = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.key.read_bytes(), pki.cert.read_bytes())
    async with grpc.aio.secure_channel(stack.address("llm"), mutual) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_rotated_certificate_files_are_served_without_a_restart(stack, tmp_path):
    first = make_dev_pki(tmp_path / "first")
    await stack.start_model_service("llm", MINMO_TLS_CERT=str(first.cert), MINMO_TLS_KEY=str(first.key))
    address, request = stack.address("llm"), health_pb2.HealthCheckRequest()

    async def check(ca: bytes) -> grpc.StatusCode:
        async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    old_ca = first.ca.read_bytes()
    assert await check(old_ca) == grpc.StatusCode.OK
    second = make_dev_pki(tmp_path / "second")
    shutil.copy(second.key, first.key)
    shutil.copy(second.cert, first.cert)
    assert await check(second.ca.read_bytes()) == grpc.StatusCode.OK, "new handshakes use the new certificate"
    assert await check(old_ca) == grpc.StatusCode.UNAVAILABLE


def test_keys_file_format():
    keys = parse_keys(f"# comment\n\nalice {key_digest('k')} 2 # two sessions\n")
    assert [(key.name, key.max_sessions) for key in keys.values()] == [("alice", 2)]
    with pytest.raises(ValueError, match="line 1"):
        parse_keys("alice not-a-digest 2\n")



async def test_a_keys_session_quota_holds_across_duplex_replicas(stack, tmp_path):
    """Two duplex replicas share one Redis: a key with 2 sessions gets 2 in all, refused before any work starts."""
    key = f"key-of-carol-{uuid.uuid4().hex}"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"carol {key_digest(key)} 2\n")
    for name in ("encoder", "llm", "voicelm", "vocoder"):
        await stack.start_model_service(name)
    for _ in range(2):
        await stack.start_duplex(MINMO_API_KEYS_FILE=str(keys))
    stubs = [stack.conversation(index)[1] for index in range(2)]
    held = []
    for stub in stubs:  # one session on each replica
        call = stub.Converse(metadata=_bearer(key))
        await call.write(_config(text_only=True))
        assert (await call.read()).HasField("session_started")
        held.append(call)
    for stub in stubs:
        code, details = await _opens(stub, _bearer(key))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 2" in details, (code, details)
    assert stack.hosts["llm"][0].active_sessions() == 2, "a refused session started no work"
    held[0].cancel()
    async with asyncio.timeout(10):
        while not isinstance(opened := await _opens(stubs[1], _bearer(key)), conversation_pb2.SessionStarted):
            await asyncio.sleep(0.1)  # the first replica releases the slot when it sees the cancel
    assert opened.session_id
    held[1].cancel()
