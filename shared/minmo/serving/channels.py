"""Client channels to peer services.

gRPC runs over long-lived HTTP/2 connections, so a Kubernetes ClusterIP Service pins every stream of
a client to one pod. We balance on the client instead: a peer target may list several addresses
(`ipv4:10.0.0.1:50052,10.0.0.2:50052`) or name a headless Service (`dns:///minmo-llm:50052`), and the
channel uses the `round_robin` policy, so a new session stream goes to the next ready replica and a
lost replica's sessions reconnect to a live one.
"""

from __future__ import annotations

import grpc


def peer_target(addresses: str) -> str:
    """Turn "host:port" or "host:port,host:port" into a gRPC target that round_robin can spread over."""
    parts = [part.strip() for part in addresses.split(",") if part.strip()]
    if not parts:
        raise ValueError("a peer address list is empty")
    if len(parts) == 1 and ("://" in parts[0] or parts[0].startswith(("ipv4:", "ipv6:", "unix:", "dns:"))):
        return parts[0]
    if all(part.split(":")[0].replace(".", "").isdigit() for part in parts):
        return "ipv4:" + ",".join(parts)
    if len(parts) == 1:
        return f"dns:///{parts[0]}"
    raise ValueError(f"several peer addresses must be IPv4 host:port pairs, got {addresses!r}")


def open_channel(
    addresses: str,
    max_message_bytes: int = 4 * 1024 * 1024,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A round-robin channel to a peer; over TLS (mTLS with a client certificate) when `credentials` are given
    (see `minmo.serving.tls.channel_credentials`). `server_name`: the name the peer's certificate must carry when
    `addresses` is an IP resolved from it (a pod address behind a headless Service)."""
    target = peer_target(addresses)
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)
